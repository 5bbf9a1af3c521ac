// The agent workbench: sign in, go ready, take customers, talk, hang up.
//
// Machine-readable state (data-testid="call-state", window.vcounter.state):
//   idle     no customer (also before signing in)
//   offered  a customer_offer card is showing
//   active   call_started received: media negotiated with the hub
//   ended    call_ended received; back to idle with "back" or when going ready

import { CallController, publishState } from './call.js';
import {
  BUSINESSES, applyI18n, bindLangToggle, businessName, errorText, formatClock, loadBusinessNames,
  onLangChange, reasonText, t,
} from './i18n.js';
import { Login } from './login.js';
import { LocalMedia, chime } from './media.js';
import { Signaling } from './signaling.js';
import { ErrorArea, Notice, byId, byTestId, moveInto, setText, showScreen } from './ui.js';

const TOKEN_KEY = 'vcounter.agent.token';
const END_FALLBACK_MS = 3000;

const el = {
  statusText: byId('status-text'),
  langToggle: byTestId('lang-toggle'),
  logout: byTestId('logout-button'),
  reconnectingBanner: byTestId('reconnecting-banner'),
  offlineBanner: byTestId('offline-banner'),
  offlineText: byId('offline-text'),
  reconnect: byTestId('reconnect-button'),
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
  stageCustomerName: byId('stage-customer-name'),
  callTimer: byId('call-timer'),
  callDuration: byId('call-duration'),
  callSlot: byId('call-video-slot'),
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

const app = {
  state: 'idle',
  loggedIn: false,
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
  endTimer: null,
  endReason: null,
  peerLostAt: null,
  peerWindowS: 0,
  peerTimer: null,
};

const devices = new LocalMedia({
  video: el.localVideo,
  onLevel: (level) => {
    el.micLevel.value = level;
  },
  onChange: renderDevices,
});

const login = new Login({
  tokenKey: TOKEN_KEY,
  roles: ['agent'],
  wrongRoleKey: 'agent.notAgent',
  onSignedIn: enterWorkbench,
});

const call = new CallController({
  devices,
  errors,
  send,
  isActive: () => app.state === 'active',
  isConnected: () => app.signaling !== null && app.signaling.isOpen,
  onTick: renderCall,
});

// --- rendering -----------------------------------------------------------------

function setState(state) {
  app.state = state;
  publishState(state);
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
  const duration = call.clockText();
  setText(el.callTimer, duration);
  setText(el.callDuration, duration);
}

function renderDevices() {
  if (devices.problem) {
    setText(el.deviceErrorText, t(`device.${devices.problem}`));
    el.deviceError.hidden = false;
  } else {
    el.deviceError.hidden = true;
  }
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
  renderDevices();
  login.renderError();
  renderOffline();
  setText(el.endReason, app.endReason ? reasonText('agentReason', app.endReason) : '');
  peerNotice.refresh();
  call.refresh();
}

// --- login ---------------------------------------------------------------------

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
  await login.revoke();
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
  login.setError(loginErrorKey);
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
    if (login.token) {
      sig.send({ type: 'auth', token: login.token });
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
      call.onAnswer(msg);
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
  if (code === 'bad_sdp' && call.retryAfterBadSdp()) return;
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
  const restartClock = app.sessionId !== msg.session_id;
  app.sessionId = msg.session_id;
  app.peer = msg.peer || null;
  app.endReason = null;
  call.begin(msg, { restartClock });
  setState('active');
  call.startMedia();
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

function closeCall() {
  call.close();
  clearInterval(app.peerTimer);
  clearTimeout(app.endTimer);
  app.endTimer = null;
  app.sessionId = null;
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
  call.closePeer();
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

async function loadConfig() {
  if (await loadBusinessNames()) renderAll();
}

// --- start ---------------------------------------------------------------------

function init() {
  bindLangToggle(el.langToggle);
  applyI18n();
  onLangChange(renderAll);
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
  el.retryDevices.addEventListener('click', () => devices.start());
  el.back.addEventListener('click', () => {
    if (app.state === 'ended') setState('idle');
  });

  setState('idle');
  renderAll();
  loadConfig();
  login.resume();
}

init();
