// The agent workbench: sign in, go ready, take customers, talk, hang up.
//
// Machine-readable state (data-testid="call-state", window.vcounter.state):
//   idle     no customer (also before signing in)
//   offered  a customer_offer card is showing
//   active   call_started received: media negotiated with the hub
//   ended    call_ended received; back to idle with "back" or when going ready

import {
  applyI18n, bindLangToggle, businessName, errorText, formatClock, onLangChange, reasonText,
  setBusinessNames, t,
} from './i18n.js';
import { Call, LocalMedia, chime, playVideo, showStream } from './media.js';
import { Signaling } from './signaling.js';
import { ErrorArea, Notice, byId, byTestId, moveInto, setText, showScreen, store } from './ui.js';

const TOKEN_KEY = 'vcounter.agent.token';
const BUSINESSES = ['account_opening', 'loan_signing', 'wealth_product'];
const END_FALLBACK_MS = 3000;
const MAX_RENEGOTIATIONS = 2;

const el = {
  callState: byTestId('call-state'),
  statusText: byId('status-text'),
  statusPill: byId('status-pill'),
  langToggle: byTestId('lang-toggle'),
  logout: byTestId('logout-button'),
  reconnectingBanner: byTestId('reconnecting-banner'),
  offlineBanner: byTestId('offline-banner'),
  offlineText: byId('offline-text'),
  reconnect: byTestId('reconnect-button'),
  loginForm: byId('login-form'),
  loginUsername: byTestId('login-username'),
  loginPassword: byTestId('login-password'),
  loginError: byTestId('login-error'),
  loginSubmit: byTestId('login-submit'),
  agentName: byTestId('agent-name'),
  agentUsername: byId('agent-username'),
  agentSkills: byTestId('agent-skills'),
  readyToggle: byTestId('ready-toggle'),
  readyToggleText: byId('ready-toggle-text'),
  readyToggleHint: byId('ready-toggle-hint'),
  queueStats: byTestId('queue-stats'),
  localVideo: byTestId('local-video'),
  previewSlot: byId('preview-video-slot'),
  cameraInCall: byId('camera-in-call'),
  micLevel: byTestId('mic-level'),
  deviceError: byId('device-error'),
  deviceErrorText: byId('device-error-text'),
  retryDevices: byTestId('retry-devices'),
  idlePanel: byId('idle-panel'),
  idleHint: byId('idle-hint'),
  offerCard: byTestId('offer-card'),
  offerName: byTestId('offer-name'),
  offerBusiness: byTestId('offer-business'),
  offerWaited: byTestId('offer-waited'),
  offerCountdown: byTestId('offer-countdown'),
  countdownFill: byId('countdown-fill'),
  accept: byTestId('accept-button'),
  decline: byTestId('decline-button'),
  callPanel: byId('call-panel'),
  remoteVideo: byTestId('remote-video'),
  stageCustomerName: byId('stage-customer-name'),
  callTimer: byId('call-timer'),
  callDuration: byId('call-duration'),
  mediaStatus: byId('media-status'),
  playButton: byTestId('play-button'),
  callSlot: byId('call-video-slot'),
  mute: byTestId('mute-button'),
  muteLabel: byId('mute-label'),
  camera: byTestId('camera-button'),
  cameraLabel: byId('camera-label'),
  hangup: byTestId('hangup-button'),
  customerName: byTestId('customer-name'),
  customerBusiness: byTestId('customer-business'),
  customerSession: byTestId('customer-session'),
  endedPanel: byId('ended-panel'),
  endReason: byTestId('end-reason'),
  back: byTestId('back-button'),
};

const screens = { login: byId('screen-login'), workbench: byId('screen-workbench') };
const errors = new ErrorArea(byId('error-area'), byTestId('error-message'), byId('error-close'));
const peerNotice = new Notice(byTestId('peer-notice'));
const mediaStatus = new Notice(el.mediaStatus);

const app = {
  state: 'idle',
  loggedIn: false,
  token: null,
  user: null,
  signaling: null,
  authenticated: false,
  /** why the socket is closed for good: 'expired', 'replaced', 'forbidden' or null */
  offlineReason: null,
  status: null,
  statusPending: false,
  waiting: null,
  offer: null,
  offerTimer: null,
  peer: null,
  sessionId: null,
  iceServers: [],
  call: null,
  renegotiations: 0,
  keyframeTimer: null,
  callStartedAt: null,
  callTimer: null,
  endTimer: null,
  endReason: null,
  peerLostAt: null,
  peerWindowS: 0,
  peerTimer: null,
  muted: false,
  cameraOff: false,
  loginErrorKey: null,
};

window.vcounter = { pc: null, state: 'idle' };

const devices = new LocalMedia({
  video: el.localVideo,
  onLevel: (level) => {
    el.micLevel.value = level;
  },
  onChange: renderDevices,
});

// --- rendering -----------------------------------------------------------------

function setState(state) {
  app.state = state;
  window.vcounter.state = state;
  el.callState.textContent = state;
  el.statusPill.dataset.state = state;
  document.body.dataset.state = state;
  renderStatus();
  renderDesk();
}

function renderStatus() {
  const key = app.state === 'idle' ? 'state.agentIdle' : `state.${app.state}`;
  setText(el.statusText, t(key));
}

/** Exactly one of: idle panel, offer card, call panel, ended panel. */
function renderDesk() {
  el.idlePanel.hidden = app.state !== 'idle';
  el.offerCard.hidden = app.state !== 'offered';
  el.callPanel.hidden = app.state !== 'active';
  el.endedPanel.hidden = app.state !== 'ended';
  moveInto(app.state === 'active' ? el.callSlot : el.previewSlot, el.localVideo);
  el.cameraInCall.hidden = app.state !== 'active';
  el.previewSlot.hidden = app.state === 'active';
  setText(el.idleHint, t(app.status === 'ready' ? 'agent.idleReady' : 'agent.idleAway'));
}

function renderProfile() {
  const user = app.user || {};
  setText(el.agentName, user.display_name || user.username || '');
  setText(el.agentUsername, user.username ? `@${user.username}` : '');
  el.agentSkills.replaceChildren(
    ...(Array.isArray(user.skills) ? user.skills : []).map((skill) => {
      const li = document.createElement('li');
      li.className = 'chip';
      li.dataset.business = skill;
      li.textContent = businessName(skill);
      return li;
    }),
  );
}

function renderToggle() {
  const status = app.status;
  el.readyToggle.dataset.status = status || '';
  setText(el.readyToggleText, t(`status.${status || 'unknown'}`));
  const usable = app.authenticated && (status === 'ready' || status === 'away') && !app.statusPending;
  el.readyToggle.disabled = !usable;
  el.readyToggle.setAttribute('aria-pressed', String(status === 'ready'));
  let hint = '';
  if (status === 'ready') hint = t('agent.toggleHintReady');
  else if (status === 'away') hint = t('agent.toggleHintAway');
  setText(el.readyToggleHint, hint);
}

function renderStats() {
  const waiting = app.waiting || {};
  const skills = new Set((app.user && app.user.skills) || []);
  const types = [...new Set([...BUSINESSES, ...Object.keys(waiting)])];
  let total = 0;
  const rows = types.map((type) => {
    const count = Number(waiting[type]) || 0;
    total += count;
    return statRow(businessName(type), count, type, !skills.has(type));
  });
  rows.push(statRow(t('agent.queueTotal'), total, 'total', false));
  el.queueStats.replaceChildren(...rows);
}

function statRow(label, count, key, dim) {
  const li = document.createElement('li');
  li.className = dim ? 'stat dim' : 'stat';
  li.dataset.business = key;
  const name = document.createElement('span');
  name.className = 'stat-name';
  name.textContent = label;
  const value = document.createElement('span');
  value.className = 'stat-count';
  value.textContent = String(count);
  li.append(name, value);
  return li;
}

function offerElapsedS() {
  return app.offer ? (Date.now() - app.offer.receivedAt) / 1000 : 0;
}

function renderOffer() {
  const offer = app.offer;
  if (!offer) return;
  const elapsed = offerElapsedS();
  setText(el.offerName, offer.display_name);
  setText(el.offerBusiness, businessName(offer.business));
  setText(el.offerWaited, formatClock(offer.waited_s + elapsed));
  const total = Math.max(1, Number(offer.expires_in_s) || 0);
  const remaining = Math.max(0, Math.ceil(total - elapsed));
  setText(el.offerCountdown, remaining > 0 ? t('agent.seconds', { n: remaining }) : t('agent.offerExpired'));
  el.offerCountdown.dataset.remaining = String(remaining);
  el.countdownFill.style.width = `${Math.max(0, Math.min(100, ((total - elapsed) / total) * 100))}%`;
  el.countdownFill.parentElement.classList.toggle('urgent', remaining <= 5);
  if (remaining === 0) el.accept.disabled = true;
}

function renderCall() {
  const peer = app.peer || {};
  setText(el.stageCustomerName, peer.display_name || '');
  setText(el.customerName, peer.display_name || '');
  setText(el.customerBusiness, peer.business ? businessName(peer.business) : '');
  setText(el.customerSession, app.sessionId || '');
  const duration = app.callStartedAt ? formatClock((Date.now() - app.callStartedAt) / 1000) : '';
  setText(el.callTimer, duration);
  setText(el.callDuration, duration);
}

function renderControls() {
  el.mute.setAttribute('aria-pressed', String(app.muted));
  setText(el.muteLabel, t(app.muted ? 'call.unmute' : 'call.mute'));
  el.camera.setAttribute('aria-pressed', String(app.cameraOff));
  setText(el.cameraLabel, t(app.cameraOff ? 'call.cameraOn' : 'call.cameraOff'));
}

function renderDevices() {
  if (devices.problem) {
    setText(el.deviceErrorText, t(`device.${devices.problem}`));
    el.deviceError.hidden = false;
  } else {
    el.deviceError.hidden = true;
  }
}

function renderLoginError() {
  el.loginError.hidden = !app.loginErrorKey;
  setText(el.loginError, app.loginErrorKey ? t(app.loginErrorKey) : '');
}

function renderOffline() {
  const key = app.offlineReason === 'replaced' ? 'agent.replaced' : 'banner.offline';
  setText(el.offlineText, t(key));
}

function renderAll() {
  renderStatus();
  renderDesk();
  renderProfile();
  renderToggle();
  renderStats();
  renderOffer();
  renderCall();
  renderControls();
  renderDevices();
  renderLoginError();
  renderOffline();
  setText(el.endReason, app.endReason ? reasonText('agentReason', app.endReason) : '');
  peerNotice.refresh();
  mediaStatus.refresh();
}

// --- login ---------------------------------------------------------------------

function authHeaders() {
  const headers = { Accept: 'application/json' };
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  return headers;
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const username = el.loginUsername.value.trim();
  const password = el.loginPassword.value;
  if (!username) {
    el.loginUsername.focus();
    return;
  }
  if (!password) {
    el.loginPassword.focus();
    return;
  }
  app.loginErrorKey = null;
  renderLoginError();
  el.loginSubmit.disabled = true;
  setText(el.loginSubmit, t('agent.loggingIn'));
  try {
    const response = await fetch('/api/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ username, password }),
      credentials: 'same-origin',
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) {
      app.loginErrorKey = 'agent.badCredentials';
    } else if (response.status === 429) {
      app.loginErrorKey = 'agent.tooMany';
    } else if (!response.ok || typeof body.token !== 'string') {
      app.loginErrorKey = 'agent.loginFailed';
    } else if (body.role !== 'agent') {
      app.token = body.token;
      await revokeToken();
      app.loginErrorKey = 'agent.notAgent';
    } else {
      app.token = body.token;
      store.set(TOKEN_KEY, body.token);
      el.loginPassword.value = '';
      enterWorkbench(body);
    }
  } catch (err) {
    console.warn('login request failed', err);
    app.loginErrorKey = 'error.unreachable';
  } finally {
    el.loginSubmit.disabled = false;
    setText(el.loginSubmit, t('agent.login'));
    renderLoginError();
  }
}

async function revokeToken() {
  try {
    await fetch('/api/logout', { method: 'POST', headers: authHeaders(), credentials: 'same-origin' });
  } catch {
    // the token expires on its own
  }
  app.token = null;
  store.remove(TOKEN_KEY);
}

/** A token left in sessionStorage (reload): still valid? */
async function resume() {
  const token = store.get(TOKEN_KEY);
  if (typeof token !== 'string' || !token) return;
  app.token = token;
  try {
    const response = await fetch('/api/me', { headers: authHeaders(), credentials: 'same-origin' });
    if (!response.ok) throw new Error(`status ${response.status}`);
    const user = await response.json();
    if (user.role !== 'agent') throw new Error('not an agent');
    enterWorkbench(user);
  } catch (err) {
    console.info('stored login not usable:', err.message);
    app.token = null;
    store.remove(TOKEN_KEY);
  }
}

function enterWorkbench(user) {
  app.user = user;
  app.loggedIn = true;
  app.offlineReason = null;
  app.status = null;
  el.logout.hidden = false;
  renderProfile();
  renderToggle();
  renderStats();
  setState('idle');
  showScreen(screens, 'workbench');
  devices.start();
  connect();
}

async function logout() {
  if (app.state === 'active') send({ type: 'hangup' });
  leaveWorkbench(null);
  await revokeToken();
}

/** Back to the login form, with an optional error to show there. */
function leaveWorkbench(loginErrorKey) {
  app.loggedIn = false;
  if (app.signaling) app.signaling.close();
  app.signaling = null;
  app.authenticated = false;
  app.status = null;
  app.user = null;
  app.waiting = null;
  hideOffer();
  closeCall();
  devices.stop();
  peerNotice.hide();
  el.reconnectingBanner.hidden = true;
  el.offlineBanner.hidden = true;
  el.logout.hidden = true;
  app.endReason = null;
  app.loginErrorKey = loginErrorKey;
  renderLoginError();
  setState('idle');
  showScreen(screens, 'login');
}

// --- signaling -----------------------------------------------------------------

function connect() {
  if (app.signaling) app.signaling.close();
  const sig = new Signaling('/ws/agent', { shouldReconnect: () => app.loggedIn });
  app.signaling = sig;
  sig.on('open', () => {
    app.authenticated = false;
    el.offlineBanner.hidden = true;
    if (app.token) {
      sig.send({ type: 'auth', token: app.token });
    }
  });
  sig.on('message', onMessage);
  sig.on('reconnecting', () => {
    el.reconnectingBanner.hidden = false;
    connectionLost();
  });
  sig.on('giveup', () => {
    el.reconnectingBanner.hidden = true;
    connectionLost();
    goOffline();
  });
  sig.on('closed', () => {
    el.reconnectingBanner.hidden = true;
    connectionLost();
    if (app.offlineReason === 'expired') leaveWorkbench('agent.sessionExpired');
    else if (app.offlineReason === 'forbidden') leaveWorkbench('agent.notAgent');
    else goOffline();
  });
  sig.connect();
}

/** The socket dropped: the server gives an offered customer to someone else and requeues a call. */
function connectionLost() {
  app.authenticated = false;
  app.status = null;
  renderToggle();
  if (app.state === 'offered') {
    hideOffer();
    setState('idle');
  } else if (app.state === 'active') {
    endCall('connection_lost');
  }
}

function goOffline() {
  renderOffline();
  el.offlineBanner.hidden = false;
}

function send(message) {
  return app.signaling !== null && app.signaling.send(message);
}

function onMessage(msg) {
  switch (msg.type) {
    case 'authenticated':
      app.authenticated = true;
      app.user = { ...app.user, username: msg.username, display_name: msg.display_name, skills: msg.skills };
      el.reconnectingBanner.hidden = true;
      renderProfile();
      renderStats();
      renderToggle();
      break;
    case 'status':
      onStatus(msg.status);
      break;
    case 'queue_stats':
      app.waiting = msg.waiting;
      renderStats();
      break;
    case 'customer_offer':
      showOffer(msg);
      break;
    case 'offer_withdrawn':
      onOfferWithdrawn(msg);
      break;
    case 'call_started':
      onCallStarted(msg);
      break;
    case 'answer':
      onAnswer(msg);
      break;
    case 'peer_reconnecting':
      onPeerReconnecting(msg);
      break;
    case 'peer_reconnected':
      clearInterval(app.peerTimer);
      peerNotice.show(() => t('notice.peerReconnected'), { timeoutMs: 4000 });
      break;
    case 'call_ended':
      endCall(msg.reason);
      break;
    case 'error':
      onServerError(msg);
      break;
    default:
      break;
  }
}

function onStatus(status) {
  app.status = status;
  app.statusPending = false;
  renderToggle();
  if (status === 'ready' && app.state === 'ended') setState('idle');
  else renderDesk();
}

function onServerError(msg) {
  const code = msg.code;
  if (code === 'not_authenticated') {
    app.offlineReason = 'expired';
    return;
  }
  if (code === 'replaced') {
    app.offlineReason = 'replaced';
    return;
  }
  if (code === 'forbidden' && msg.fatal) {
    app.offlineReason = 'forbidden';
    return;
  }
  if (code === 'bad_sdp' && app.call && app.renegotiations < MAX_RENEGOTIATIONS) {
    app.renegotiations += 1;
    startMedia();
    return;
  }
  if (code === 'bad_state') {
    app.statusPending = false;
    renderToggle();
    if (app.state === 'offered') {
      // accepting an offer that has just expired
      hideOffer();
      setState('idle');
    }
  }
  errors.show(errorText(code, msg.message));
}

// --- offers --------------------------------------------------------------------

function showOffer(msg) {
  hideOffer();
  app.offer = { ...msg, receivedAt: Date.now() };
  el.accept.disabled = false;
  el.decline.disabled = false;
  peerNotice.hide();
  app.endReason = null;
  setState('offered');
  renderOffer();
  app.offerTimer = setInterval(renderOffer, 250);
  chime();
  el.accept.focus({ preventScroll: true });
}

function hideOffer() {
  clearInterval(app.offerTimer);
  app.offerTimer = null;
  app.offer = null;
}

function onOfferWithdrawn(msg) {
  if (!app.offer || app.offer.session_id !== msg.session_id) return;
  hideOffer();
  if (app.state === 'offered') setState('idle');
  if (msg.reason !== 'declined') {
    peerNotice.show(() => reasonText('withdrawn', msg.reason), {
      tone: msg.reason === 'timeout' ? 'warn' : 'info',
      timeoutMs: 10000,
    });
  }
}

function onAccept() {
  if (!app.offer) return;
  if (!send({ type: 'accept', session_id: app.offer.session_id })) {
    errors.show(t('error.unreachable'));
    return;
  }
  el.accept.disabled = true;
  el.decline.disabled = true;
}

function onDecline() {
  if (!app.offer) return;
  send({ type: 'decline', session_id: app.offer.session_id });
  hideOffer();
  setState('idle');
}

// --- the call ------------------------------------------------------------------

function onCallStarted(msg) {
  hideOffer();
  peerNotice.hide();
  clearInterval(app.peerTimer);
  clearTimeout(app.endTimer);
  app.endTimer = null;
  if (app.sessionId !== msg.session_id) app.callStartedAt = Date.now();
  app.sessionId = msg.session_id;
  app.peer = msg.peer || null;
  app.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
  app.renegotiations = 0;
  app.endReason = null;
  clearInterval(app.callTimer);
  app.callTimer = setInterval(renderCall, 1000);
  renderCall();
  setState('active');
  startMedia();
}

/** A new RTCPeerConnection and offer (each call_started, or to retry). */
async function startMedia() {
  closePeer();
  await devices.ready;
  if (app.state !== 'active' || app.call !== null) return;
  const call = new Call({
    iceServers: app.iceServers,
    localStream: devices.stream,
    onRemoteStream: (stream) => {
      if (app.call !== call) return;
      el.playButton.hidden = true;
      showStream(el.remoteVideo, stream, () => {
        el.playButton.hidden = false;
      });
    },
    onConnectionState: (state) => onMediaState(call, state),
  });
  app.call = call;
  window.vcounter.pc = call.pc;
  mediaStatus.show(() => t('call.connecting'));
  try {
    const sdp = await call.createOffer();
    if (sdp === null || app.call !== call) return;
    send({ type: 'offer', sdp });
  } catch (err) {
    console.error('could not create the offer', err);
    if (app.call === call) mediaStatus.show(() => t('call.mediaFailed'), { tone: 'error' });
  }
}

async function onAnswer(msg) {
  const call = app.call;
  if (!call) return;
  try {
    await call.applyAnswer(msg.sdp);
  } catch (err) {
    console.error('could not apply the answer', err);
    if (app.call === call) errors.show(t('error.bad_sdp'));
  }
}

function onMediaState(call, state) {
  if (app.call !== call) return;
  if (state === 'connected') {
    mediaStatus.hide();
    clearTimeout(app.keyframeTimer);
    app.keyframeTimer = setTimeout(() => {
      if (app.call === call && el.remoteVideo.videoWidth === 0) send({ type: 'request_keyframe' });
    }, 3000);
  } else if (state === 'disconnected') {
    mediaStatus.show(() => t('call.mediaUnstable'), { tone: 'warn' });
  } else if (state === 'failed') {
    if (app.renegotiations < MAX_RENEGOTIATIONS && app.signaling && app.signaling.isOpen) {
      app.renegotiations += 1;
      mediaStatus.show(() => t('call.mediaRetry'), { tone: 'warn' });
      startMedia();
    } else {
      mediaStatus.show(() => t('call.mediaFailed'), { tone: 'error' });
    }
  }
}

function onPeerReconnecting(msg) {
  app.peerLostAt = Date.now();
  app.peerWindowS = Number(msg.window_s) || 30;
  const render = () => {
    const left = Math.max(0, Math.ceil(app.peerWindowS - (Date.now() - app.peerLostAt) / 1000));
    return t('notice.peerReconnectingCustomer', { n: left });
  };
  peerNotice.show(render, { tone: 'warn' });
  clearInterval(app.peerTimer);
  app.peerTimer = setInterval(() => peerNotice.refresh(), 1000);
}

function closePeer() {
  clearTimeout(app.keyframeTimer);
  if (app.call) app.call.close();
  app.call = null;
  window.vcounter.pc = null;
}

function closeCall() {
  closePeer();
  mediaStatus.hide();
  clearInterval(app.callTimer);
  clearInterval(app.peerTimer);
  clearTimeout(app.endTimer);
  app.callTimer = null;
  app.endTimer = null;
  app.callStartedAt = null;
  app.sessionId = null;
  el.remoteVideo.srcObject = null;
  el.playButton.hidden = true;
}

function endCall(reason) {
  if (app.state !== 'active') return;
  closeCall();
  if (reason !== 'connection_lost') peerNotice.hide();
  app.endReason = reason || 'unknown';
  setText(el.endReason, reasonText('agentReason', app.endReason));
  setState('ended');
}

function onHangup() {
  if (app.state !== 'active') return;
  closePeer();
  if (!send({ type: 'hangup' })) {
    endCall('agent_hangup');
    return;
  }
  clearTimeout(app.endTimer);
  app.endTimer = setTimeout(() => endCall('agent_hangup'), END_FALLBACK_MS);
}

function onToggleStatus() {
  const next = app.status === 'ready' ? 'away' : app.status === 'away' ? 'ready' : null;
  if (!next || !send({ type: 'set_status', status: next })) return;
  app.statusPending = true;
  renderToggle();
  setTimeout(() => {
    if (app.statusPending) {
      app.statusPending = false;
      renderToggle();
    }
  }, 3000);
}

function toggleMute() {
  app.muted = !app.muted;
  devices.setEnabled('audio', !app.muted);
  renderControls();
}

function toggleCamera() {
  app.cameraOff = !app.cameraOff;
  devices.setEnabled('video', !app.cameraOff);
  el.localVideo.classList.toggle('camera-off', app.cameraOff);
  renderControls();
}

async function loadConfig() {
  try {
    const response = await fetch('/api/config', { headers: { Accept: 'application/json' } });
    if (!response.ok) return;
    const config = await response.json();
    setBusinessNames(config.businesses);
    renderAll();
  } catch (err) {
    console.info('using built-in business names', err);
  }
}

// --- start ---------------------------------------------------------------------

function init() {
  bindLangToggle(el.langToggle);
  applyI18n();
  onLangChange(renderAll);
  el.loginForm.addEventListener('submit', onLoginSubmit);
  el.logout.addEventListener('click', logout);
  el.reconnect.addEventListener('click', () => {
    el.offlineBanner.hidden = true;
    if (!app.loggedIn) return;
    app.offlineReason = null;
    connect();
  });
  el.readyToggle.addEventListener('click', onToggleStatus);
  el.accept.addEventListener('click', onAccept);
  el.decline.addEventListener('click', onDecline);
  el.hangup.addEventListener('click', onHangup);
  el.mute.addEventListener('click', toggleMute);
  el.camera.addEventListener('click', toggleCamera);
  el.retryDevices.addEventListener('click', () => devices.start());
  el.back.addEventListener('click', () => {
    if (app.state === 'ended') setState('idle');
  });
  el.playButton.addEventListener('click', async () => {
    if (await playVideo(el.remoteVideo)) el.playButton.hidden = true;
  });

  setState('idle');
  renderAll();
  loadConfig();
  resume();
}

init();
