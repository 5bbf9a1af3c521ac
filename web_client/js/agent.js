// The agent workbench: sign in, go ready, take customers, talk, hang up.
//
// Machine-readable state (data-testid="call-state", window.vcounter.state):
//   idle     no customer (also before signing in)
//   offered  a customer_offer card is showing
//   active   call_started received: media negotiated with the hub
//   ended    call_ended received: the wrap-up (disposition, notes) while the agent is away;
//            back to idle when the wrap-up time is over (then ready), with "ready now" or "away"
//
// The identity panel shows the server's `identity` state of the call
// (consent, ID photo and live snapshot, face comparison, liveness, presence) and
// sends the agent's identity actions; their errors are shown in the panel.
//
// The business flow panel (js/agent_flow.js) shows the server's
// flow_state: the checklist, the current step and what it still misses, and
// sends step_next, mark_confirmed and push_document.
//
// Keyboard shortcuts (listed in the "?" overlay, never while typing in a field): accept,
// decline, complete the step, customer confirmed, mute, hang up (asks first).

import { AgentFlow } from './agent_flow.js';
import { CallController, publishState } from './call.js';
import {
  applyI18n, bindLangToggle, businessName, businessTypes, errorText, formatClock, has, loadBusinessNames,
  onLangChange, reasonText, serverText, t,
} from './i18n.js';
import { Login } from './login.js';
import { LocalMedia, chime } from './media.js';
import { Signaling } from './signaling.js';
import { ErrorArea, Notice, byId, byTestId, moveInto, setText, showScreen } from './ui.js';

const TOKEN_KEY = 'vcounter.agent.token';
const END_FALLBACK_MS = 3000;
/** after signing in again during a call: how long the call may take to be given back */
const RESUME_WAIT_MS = 5000;
/** Errors of identity actions: shown in the identity panel, never as a fatal error. */
const IDENTITY_ERRORS = new Set([
  'face_consent_required', 'no_reference', 'no_video', 'identity_busy', 'identity_unavailable',
]);
/** An error this soon after an identity action (bad_state, invalid_message) is that action's. */
const IDENTITY_REPLY_MS = 5000;
/** How long an identity error stays in the panel. */
const IDENTITY_ERROR_MS = 15000;
const MANUAL_REASON_MIN = 3;
const MANUAL_REASON_MAX = 500;
/** Wrap-up seconds until the server's `authenticated` says otherwise. */
const DEFAULT_WRAP_UP_S = 30;

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
  stageAlarm: byId('stage-alarm'),
  identityPanel: byTestId('identity-panel'),
  identityConsent: byTestId('identity-consent'),
  presence: byTestId('presence-status'),
  presenceAgent: byTestId('presence-agent'),
  identityUnavailable: byId('identity-unavailable'),
  reference: byTestId('identity-reference'),
  referenceEmpty: byId('identity-reference-empty'),
  referenceMeta: byId('identity-reference-meta'),
  snapshot: byTestId('identity-snapshot'),
  snapshotEmpty: byId('identity-snapshot-empty'),
  snapshotMeta: byId('identity-snapshot-meta'),
  snapshotThumbs: byTestId('identity-snapshots'),
  verdict: byTestId('identity-verdict'),
  verdictDetail: byId('identity-verdict-detail'),
  liveness: byTestId('liveness-status'),
  livenessDetail: byId('liveness-detail'),
  identityBusy: byId('identity-busy'),
  identityBusyText: byId('identity-busy-text'),
  identityError: byTestId('identity-error'),
  identityVerify: byTestId('identity-verify'),
  livenessStart: byTestId('liveness-start'),
  captureSnapshot: byTestId('capture-snapshot'),
  captureReference: byTestId('capture-reference'),
  identityHint: byId('identity-hint'),
  manualReason: byTestId('manual-verify-reason'),
  manualPass: byTestId('manual-verify-pass'),
  manualFail: byTestId('manual-verify-fail'),
  manualResult: byTestId('manual-verify-result'),
  endedPanel: byId('ended-panel'),
  endReason: byTestId('end-reason'),
  endedTitle: byId('ended-title'),
  wrapUp: byTestId('wrap-up'),
  wrapUpDisposition: byTestId('wrap-up-disposition'),
  wrapUpNotes: byTestId('wrap-up-notes'),
  wrapUpCountdown: byTestId('wrap-up-countdown'),
  wrapUpError: byTestId('wrap-up-error'),
  wrapUpReady: byTestId('wrap-up-ready'),
  wrapUpAway: byTestId('wrap-up-away'),
  mute: byTestId('mute-button'),
  shortcutsButton: byTestId('shortcuts-button'),
  shortcutsHelp: byTestId('shortcuts-help'),
  shortcutsList: byTestId('shortcuts-list'),
  shortcutsClose: byTestId('shortcuts-close'),
  hangupConfirm: byTestId('hangup-confirm-agent'),
  hangupKeep: byTestId('hangup-agent-keep'),
  hangupConfirmButton: byTestId('hangup-agent-confirm'),
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
  /** signed out by a dropped socket during a call: waiting for the server to give it back */
  resuming: false,
  resumeTimer: null,
  /** seconds of wrap-up after a call before going ready again (0: stay away) */
  wrapUpS: DEFAULT_WRAP_UP_S,
};

/** The wrap-up of the call that just ended (state `ended`). */
const wrap = {
  /** the session it is for (null: the call's id is not known) */
  sessionId: null,
  /** Date.now() when the agent is set ready on their own (null: not counting down) */
  endsAt: null,
  timer: null,
  /** the error shown in the panel (an i18n key), or null */
  errorKey: null,
};

/** The identity panel of the current call. */
const idPanel = {
  /** the server's latest `identity` state for app.sessionId, or null (none yet, or face checks off) */
  state: null,
  /** an `identity` message that came before its call_started */
  early: null,
  /** the last identity action sent: {type, at}; its error reply is shown in the panel */
  pending: null,
  pendingTimer: null,
  /** an error reply to an identity action: {code, message} */
  error: null,
  errorTimer: null,
  /** the server said face checks are off */
  unavailable: false,
  /** the manual verdict sent and not yet in the state: {verified, reason} */
  manualSent: null,
  /** the snapshot picked in the thumbnails (null: the newest) */
  pickedSnapshot: null,
  /** the snapshot items the thumbnails show, to rebuild them only on change */
  thumbKey: '',
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
  role: 'agent',
  devices,
  errors,
  send,
  isActive: () => app.state === 'active',
  isConnected: () => app.signaling !== null && app.signaling.isOpen,
  onTick: renderCall,
});

const flow = new AgentFlow({ send });

// --- rendering -----------------------------------------------------------------

function setState(state) {
  if (state !== 'ended') stopWrapUp();
  if (state !== 'active') closeHangupConfirm();
  app.state = state;
  publishState(state);
  renderStatus();
  renderToggle();
  renderDesk();
  renderIdentity();
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
  renderSidebar();
}

// --- layout: the side panel folds during a call ----------------------------------

/** During a call the side panel (status, queue, camera) folds; the top bar's button opens it over the desk. */
const sidebar = { workbench: byId('screen-workbench'), toggle: byTestId('sidebar-toggle'), open: false };

function renderSidebar() {
  const inCall = app.state === 'active';
  if (!inCall) sidebar.open = false;
  sidebar.workbench.dataset.sidebar = !inCall ? 'shown' : sidebar.open ? 'open' : 'folded';
  sidebar.toggle.hidden = !inCall;
  sidebar.toggle.setAttribute('aria-expanded', String(inCall && sidebar.open));
}

function bindSidebar() {
  sidebar.toggle.addEventListener('click', () => {
    sidebar.open = !sidebar.open;
    renderSidebar();
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && sidebar.open) {
      sidebar.open = false;
      renderSidebar();
      sidebar.toggle.focus();
    }
  });
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
  // during the wrap-up its own buttons say what comes next
  const usable = app.authenticated && (status === 'ready' || status === 'away') && !app.statusPending
    && app.state !== 'ended';
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
  const types = [...new Set([...businessTypes(), ...Object.keys(waiting)])];
  const longest = app.longestWait || {};
  const long = new Set(app.longWait || []);
  let total = 0;
  const rows = types.map((type) => {
    const count = Number(waiting[type]) || 0;
    total += count;
    const row = statRow(businessName(type), count, type, !skills.has(type));
    if (count > 0 && Number.isFinite(longest[type])) {
      // the longest wait, flagged once it passed the server's long-wait limit
      const wait = document.createElement('span');
      wait.className = long.has(type) ? 'stat-wait long-wait' : 'stat-wait';
      wait.dataset.testid = `longest-wait-${type}`;
      wait.dataset.longWait = String(long.has(type));
      wait.textContent = t(long.has(type) ? 'agent.longWait' : 'agent.longestWait', {
        wait: formatClock(longest[type]),
      });
      row.append(wait);
    }
    return row;
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
  renderIdentity();
  flow.refresh();
  renderWrapUp();
  renderShortcuts();
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
  el.shortcutsButton.hidden = false;
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
  el.shortcutsButton.hidden = true;
  closeShortcuts();
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
    endCall('connection_lost');
    goOffline();
  });
  sig.on('closed', () => {
    el.reconnectingBanner.hidden = true;
    connectionLost();
    endCall('connection_lost');
    if (app.offlineReason === 'expired') leaveWorkbench('agent.sessionExpired');
    else if (app.offlineReason === 'forbidden') leaveWorkbench('agent.notAgent');
    else goOffline();
  });
  sig.connect();
}

/**
 * The socket dropped: the server gives an offered customer to someone else; a call waits for us
 * for its rejoin window (the customer is told), so the call view stays and the media stops.
 */
function connectionLost() {
  app.authenticated = false;
  app.status = null;
  renderToggle();
  clearTimeout(app.resumeTimer);
  if (app.state === 'offered') {
    hideOffer();
    setState('idle');
  } else if (app.state === 'active') {
    call.closePeer();
    app.resuming = true;
  }
}

/**
 * Signed in again during a call: the server gives the call back (call_started again) at once,
 * through another node within a second; a call not given back by then is over.
 */
function awaitResume() {
  clearTimeout(app.resumeTimer);
  if (!app.resuming || app.state !== 'active') return;
  app.resumeTimer = setTimeout(() => {
    if (app.resuming) endCall('connection_lost');
  }, RESUME_WAIT_MS);
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
      awaitResume();
      app.user = { ...app.user, username: msg.username, display_name: msg.display_name, skills: msg.skills };
      if (Number.isFinite(msg.wrap_up_s) && msg.wrap_up_s >= 0) app.wrapUpS = msg.wrap_up_s;
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
      app.longestWait = msg.longest_wait_s || {};
      app.longWait = msg.long_wait || [];
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
    case 'media_lost':
    case 'media_restored':
    case 'media_restart':
      call.onMediaMessage(msg);
      break;
    case 'call_ended':
      endCall(msg.reason);
      break;
    case 'recording_alert':
      onRecordingAlert(msg);
      break;
    case 'identity':
      onIdentity(msg);
      break;
    case 'flow_state':
      flow.onState(msg);
      break;
    case 'wrap_up_saved':
      peerNotice.show(() => t('wrapUp.saved', { disposition: t(`wrapUp.disposition.${msg.disposition}`) }), {
        timeoutMs: 6000,
      });
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
  if (status === 'ready' && app.state === 'ended') leaveWrapUp('ready');
  else renderDesk();
}

/**
 * The recording of a call of ours cannot be stored (the server's disk is full): it is held and
 * retried (failing), so much is held that media is no longer recorded (paused: end the call), or
 * storage works again (recovered). Also after the call: its recording is still being stored.
 */
function onRecordingAlert(msg) {
  const key = {
    failing: 'agent.recordingFailing',
    paused: 'agent.recordingPaused',
    recovered: 'agent.recordingRecovered',
  }[msg.state];
  if (!key) return;
  if (msg.state === 'recovered') errors.show(t(key));
  else errors.show(t(key), 0); // stays until storage works again or it is dismissed
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
  if (app.state === 'active' && flow.takesError(code)) {
    flow.onError(msg.message);
    return;
  }
  if (isIdentityReply(code)) {
    showIdentityError(code, msg.message);
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
  app.resuming = false;
  clearTimeout(app.resumeTimer);
  el.reconnectingBanner.hidden = true;
  hideOffer();
  peerNotice.hide();
  clearInterval(app.peerTimer);
  clearTimeout(app.endTimer);
  app.endTimer = null;
  const restartClock = app.sessionId !== msg.session_id;
  if (restartClock) resetIdentity();
  app.sessionId = msg.session_id;
  if (idPanel.early && idPanel.early.session_id === msg.session_id) onIdentity(idPanel.early);
  idPanel.early = null;
  flow.begin(msg.session_id);
  app.peer = msg.peer || null;
  app.endReason = null;
  call.begin(msg, { restartClock });
  setState('active');
  call.startMedia();
}

function onPeerReconnecting(msg) {
  call.clearMediaLost('customer'); // the reconnect notice below says more
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
  resetIdentity();
  flow.reset();
}

function endCall(reason) {
  app.resuming = false;
  clearTimeout(app.resumeTimer);
  if (app.state !== 'active') return;
  const sessionId = app.sessionId;
  closeCall();
  if (reason !== 'connection_lost') peerNotice.hide();
  app.endReason = reason || 'unknown';
  setText(el.endReason, reasonText('agentReason', app.endReason));
  setState('ended');
  startWrapUp(sessionId);
  // the end of a call is news: in sight, whatever was scrolled to during the call
  el.endedPanel.scrollIntoView({ block: 'center' });
  el.endedTitle.focus({ preventScroll: true });
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

// --- wrap-up after a call ------------------------------------------------------------

/** The call ended: the wrap-up form, empty, and the countdown to ready (the server set us away). */
function startWrapUp(sessionId) {
  stopWrapUp();
  wrap.sessionId = sessionId || null;
  wrap.errorKey = null;
  el.wrapUpDisposition.value = '';
  el.wrapUpNotes.value = '';
  if (app.wrapUpS > 0) {
    wrap.endsAt = Date.now() + app.wrapUpS * 1000;
    wrap.timer = setInterval(onWrapUpTick, 250);
  }
  renderWrapUp();
}

function stopWrapUp() {
  clearInterval(wrap.timer);
  wrap.timer = null;
  wrap.endsAt = null;
}

function wrapUpRemainingS() {
  return wrap.endsAt === null ? null : Math.max(0, Math.ceil((wrap.endsAt - Date.now()) / 1000));
}

function onWrapUpTick() {
  if (app.state !== 'ended') {
    stopWrapUp();
    return;
  }
  if (wrapUpRemainingS() === 0) leaveWrapUp('ready');
  else renderWrapUp();
}

/**
 * Save the wrap-up (when a disposition is chosen) and leave it: `ready` for the next customer, or
 * `away`. Notes without a disposition are never dropped: the panel stays, the countdown stops.
 */
function leaveWrapUp(next) {
  if (app.state !== 'ended') return;
  const disposition = el.wrapUpDisposition.value;
  const notes = el.wrapUpNotes.value.trim();
  if (!disposition && notes) {
    stopWrapUp();
    wrap.errorKey = 'wrapUp.needDisposition';
    renderWrapUp();
    el.wrapUpDisposition.focus();
    return;
  }
  if (disposition && wrap.sessionId) {
    if (!send({ type: 'wrap_up', session_id: wrap.sessionId, disposition, notes })) {
      stopWrapUp();
      wrap.errorKey = 'error.unreachable';
      renderWrapUp();
      return;
    }
  }
  wrap.sessionId = null;
  setState('idle');
  if (next === 'ready' && app.status !== 'ready' && send({ type: 'set_status', status: 'ready' })) {
    app.statusPending = true;
    renderToggle();
  }
}

function renderWrapUp() {
  const remaining = app.state === 'ended' ? wrapUpRemainingS() : null;
  el.wrapUp.dataset.state = app.state !== 'ended' ? '' : remaining === null ? 'stopped' : 'counting';
  el.wrapUpCountdown.dataset.remaining = remaining === null ? '' : String(remaining);
  setText(el.wrapUpCountdown, remaining === null ? t('wrapUp.noCountdown') : t('wrapUp.countdown', { n: remaining }));
  el.wrapUpError.hidden = !wrap.errorKey;
  setText(el.wrapUpError, wrap.errorKey ? t(wrap.errorKey) : '');
}

function bindWrapUp() {
  el.wrapUp.addEventListener('submit', (event) => {
    event.preventDefault();
    leaveWrapUp('ready');
  });
  el.wrapUpAway.addEventListener('click', () => leaveWrapUp('away'));
  el.wrapUpDisposition.addEventListener('change', () => {
    if (wrap.errorKey === 'wrapUp.needDisposition') wrap.errorKey = null;
    renderWrapUp();
  });
}

// --- keyboard shortcuts ----------------------------------------------------------------

/** Each shortcut: its key, the label's i18n key, and what it does (false: nothing to do now). */
const SHORTCUTS = [
  { key: 'a', name: 'accept', run: () => app.state === 'offered' && !el.accept.disabled && (onAccept(), true) },
  { key: 'd', name: 'decline', run: () => app.state === 'offered' && !el.decline.disabled && (onDecline(), true) },
  { key: 'n', name: 'next', run: () => app.state === 'active' && flow.nextFromKey() },
  { key: 'c', name: 'confirmed', run: () => app.state === 'active' && flow.confirmFromKey() },
  { key: 'm', name: 'mute', run: () => app.state === 'active' && (el.mute.click(), true) },
  { key: 'h', name: 'hangup', run: () => app.state === 'active' && (openHangupConfirm(), true) },
  { key: '?', name: 'help', run: () => (openShortcuts(), true) },
];

/** The key a keydown means: the character typed, or the letter key under an input method. */
function keyOf(event) {
  if (event.key && event.key.length === 1) return event.key.toLowerCase();
  const letter = /^Key([A-Z])$/.exec(event.code || '');
  return letter ? letter[1].toLowerCase() : '';
}

function typingIn(target) {
  return target instanceof Element && Boolean(target.closest('input, textarea, select, [contenteditable]:not([contenteditable="false"])'));
}

function onShortcutKey(event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
  if (event.key === 'Escape') {
    if (!el.hangupConfirm.hidden) closeHangupConfirm(true);
    else if (!el.shortcutsHelp.hidden) closeShortcuts();
    return;
  }
  if (!app.loggedIn || typingIn(event.target)) return;
  if (!el.hangupConfirm.hidden) return; // the dialog's own buttons answer it (Enter, Escape)
  const key = keyOf(event);
  if (!el.shortcutsHelp.hidden) {
    if (key === '?') {
      event.preventDefault();
      closeShortcuts();
    }
    return;
  }
  const shortcut = SHORTCUTS.find((s) => s.key === key);
  if (shortcut && shortcut.run()) event.preventDefault();
}

function renderShortcuts() {
  el.shortcutsList.replaceChildren(...SHORTCUTS.map((s) => {
    const row = document.createElement('div');
    row.dataset.shortcut = s.name;
    const dt = document.createElement('dt');
    const kbd = document.createElement('kbd');
    kbd.textContent = s.key.toUpperCase();
    dt.append(kbd);
    const dd = document.createElement('dd');
    dd.textContent = t(`shortcuts.action.${s.name}`);
    row.append(dt, dd);
    return row;
  }));
}

function openShortcuts() {
  renderShortcuts();
  el.shortcutsHelp.hidden = false;
  el.shortcutsClose.focus();
}

function closeShortcuts() {
  if (el.shortcutsHelp.hidden) return;
  el.shortcutsHelp.hidden = true;
  if (app.loggedIn) el.shortcutsButton.focus();
}

function openHangupConfirm() {
  el.hangupConfirm.hidden = false;
  el.hangupConfirmButton.focus();
}

function closeHangupConfirm(restoreFocus = false) {
  if (el.hangupConfirm.hidden) return;
  el.hangupConfirm.hidden = true;
  if (restoreFocus && app.state === 'active') el.hangup.focus({ preventScroll: true });
}

function bindShortcuts() {
  document.addEventListener('keydown', onShortcutKey);
  el.shortcutsButton.addEventListener('click', openShortcuts);
  el.shortcutsClose.addEventListener('click', closeShortcuts);
  el.shortcutsHelp.addEventListener('click', (event) => {
    if (event.target === el.shortcutsHelp) closeShortcuts();
  });
  el.hangupKeep.addEventListener('click', () => closeHangupConfirm(true));
  el.hangupConfirmButton.addEventListener('click', () => {
    closeHangupConfirm();
    onHangup();
  });
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

// --- identity panel ----------------------------------------------------------

function onIdentity(msg) {
  if (!msg.state || typeof msg.state !== 'object') return;
  if (msg.session_id !== app.sessionId) {
    if (app.state !== 'active') idPanel.early = msg;
    return;
  }
  idPanel.state = msg.state;
  idPanel.unavailable = false;
  if (msg.state.manual) idPanel.manualSent = null;
  // the server has taken the last action up (busy, a new snapshot, the manual verdict): the
  // buttons follow the state again; a second click meanwhile gets identity_busy at worst
  clearPending();
  renderIdentity();
}

function isIdentityReply(code) {
  if (IDENTITY_ERRORS.has(code)) return true;
  return (code === 'bad_state' || code === 'invalid_message') && app.state === 'active'
    && idPanel.pending !== null && Date.now() - idPanel.pending.at < IDENTITY_REPLY_MS;
}

function showIdentityError(code, message) {
  if (code === 'identity_unavailable') idPanel.unavailable = true;
  if (idPanel.pending && idPanel.pending.type === 'manual_verification') idPanel.manualSent = null;
  clearPending();
  idPanel.error = { code, message };
  clearTimeout(idPanel.errorTimer);
  idPanel.errorTimer = setTimeout(() => {
    idPanel.error = null;
    renderIdentity();
  }, IDENTITY_ERROR_MS);
  renderIdentity();
}

function clearPending() {
  clearTimeout(idPanel.pendingTimer);
  idPanel.pending = null;
}

/** Send one identity action of the current call; the panel waits for its answer. */
function sendIdentity(message) {
  if (app.state !== 'active') return false;
  if (!send(message)) {
    showIdentityError('unreachable');
    return false;
  }
  clearTimeout(idPanel.errorTimer);
  idPanel.error = null;
  clearPending();
  idPanel.pending = { type: message.type, at: Date.now() };
  idPanel.pendingTimer = setTimeout(() => {
    idPanel.pending = null;
    renderIdentity();
  }, IDENTITY_REPLY_MS);
  renderIdentity();
  return true;
}

function sendManual(verified) {
  const reason = el.manualReason.value.trim();
  if (reason.length < MANUAL_REASON_MIN || reason.length > MANUAL_REASON_MAX) return;
  if (sendIdentity({ type: 'manual_verification', verified, reason })) {
    idPanel.manualSent = { verified, reason };
    el.manualReason.value = '';
    renderIdentity();
  }
}

/** The call is over (or another one starts): nothing of this customer stays on screen. */
function resetIdentity() {
  clearPending();
  clearTimeout(idPanel.errorTimer);
  Object.assign(idPanel, {
    state: null, error: null, unavailable: false, manualSent: null, pickedSnapshot: null, thumbKey: '',
  });
  el.manualReason.value = '';
  el.snapshotThumbs.replaceChildren();
  renderIdentity();
}

function evidenceUrl(item) {
  return `/api/identity/${encodeURIComponent(app.sessionId || '')}/evidence/${encodeURIComponent(item)}`;
}

/** A time from the panel (ISO text, or seconds since the epoch) as the local hh:mm:ss. */
function clockOf(at) {
  if (at === null || at === undefined || at === '') return '';
  const date = typeof at === 'number' ? new Date(at * 1000) : new Date(at);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString([], { hour12: false });
}

function stepLabel(step) {
  return has(`identity.step.${step}`) ? t(`identity.step.${step}`) : String(step ?? '');
}

/** Point an evidence <img> at an item (loaded once per item); the placeholder shows otherwise. */
function showEvidence(img, empty, item, emptyKey) {
  const wanted = item ? String(item) : '';
  if ((img.dataset.item || '') !== wanted) {
    img.dataset.item = wanted;
    img.dataset.loaded = '';
    if (wanted) img.src = evidenceUrl(wanted);
    else img.removeAttribute('src');
  }
  const failed = img.dataset.loaded === 'failed';
  img.hidden = !wanted || failed;
  empty.hidden = Boolean(wanted) && !failed;
  setText(empty, t(wanted ? 'identity.imageUnavailable' : emptyKey));
}

function watchEvidence(img) {
  img.addEventListener('load', () => {
    img.dataset.loaded = 'ok';
  });
  img.addEventListener('error', () => {
    if (!img.dataset.item) return;
    img.dataset.loaded = 'failed';
    renderIdentity();
  });
}

function presenceState(p) {
  if (!p) return '';
  if (p.multiple) return 'multiple';
  if (p.missing) return 'missing';
  if (p.mismatch) return 'mismatch';
  return 'ok';
}

function renderPresence(st) {
  const presence = (st && st.presence) || {};
  const customer = presence.customer;
  const state = presenceState(customer);
  el.presence.dataset.state = state;
  el.presence.hidden = !st;
  el.presence.className = `badge presence-badge badge-${state === 'ok' ? 'ok' : state ? 'danger' : 'info'}`;
  const text = state === 'multiple' ? t('identity.presence.multiple', { n: customer.faces })
    : t(`identity.presence.${state || 'unknown'}`);
  setText(el.presence, text);
  const alarm = state !== '' && state !== 'ok';
  el.stageAlarm.hidden = !alarm;
  el.stageAlarm.dataset.state = state;
  setText(el.stageAlarm, alarm ? text : '');
  // the agent's own picture is watched too (recorded as an anomaly): tell them
  const agent = presence.agent;
  const agentState = agent && agent.multiple ? 'multiple' : agent && agent.missing ? 'missing' : '';
  el.presenceAgent.hidden = !agentState;
  el.presenceAgent.dataset.state = agentState;
  el.presenceAgent.className = 'badge presence-badge badge-warn';
  setText(el.presenceAgent, agentState === 'multiple' ? t('identity.presence.agentMultiple')
    : agentState === 'missing' ? t('identity.presence.agentMissing') : '');
}

function renderPhotos(st) {
  const ref = st && st.reference;
  showEvidence(el.reference, el.referenceEmpty, ref && ref.item, 'identity.noReference');
  const refMeta = ref ? [has(`identity.source.${ref.source}`) ? t(`identity.source.${ref.source}`) : ref.source,
    clockOf(ref.at)] : [];
  setText(el.referenceMeta, refMeta.filter(Boolean).join(' · '));
  el.referenceMeta.dataset.source = ref ? String(ref.source || '') : '';

  const snapshots = (st && Array.isArray(st.snapshots)) ? st.snapshots.filter((s) => s && s.item) : [];
  let shown = snapshots.find((s) => s.item === idPanel.pickedSnapshot) || snapshots[snapshots.length - 1] || null;
  if (!shown && st && st.verification && st.verification.snapshot) shown = { item: st.verification.snapshot };
  showEvidence(el.snapshot, el.snapshotEmpty, shown && shown.item, 'identity.noSnapshot');
  const snapMeta = shown ? [shown.purpose && has(`identity.purpose.${shown.purpose}`)
    ? t(`identity.purpose.${shown.purpose}`) : '', clockOf(shown.at)] : [];
  setText(el.snapshotMeta, snapMeta.filter(Boolean).join(' · '));

  const key = snapshots.map((s) => s.item).join(',');
  if (key !== idPanel.thumbKey) {
    idPanel.thumbKey = key;
    el.snapshotThumbs.replaceChildren(...(snapshots.length > 1 ? snapshots : []).map((s) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'identity-thumb';
      button.dataset.item = s.item;
      const img = document.createElement('img');
      img.alt = '';
      img.loading = 'lazy';
      img.src = evidenceUrl(s.item);
      button.append(img);
      li.append(button);
      return li;
    }));
  }
  for (const button of el.snapshotThumbs.querySelectorAll('button')) {
    button.setAttribute('aria-pressed', String(Boolean(shown) && button.dataset.item === shown.item));
    const purpose = snapshots.find((s) => s.item === button.dataset.item)?.purpose;
    button.title = [purpose && has(`identity.purpose.${purpose}`) ? t(`identity.purpose.${purpose}`) : '',
      clockOf(snapshots.find((s) => s.item === button.dataset.item)?.at)].filter(Boolean).join(' · ');
  }
}

/** The agent's manual pass, when it followed a failed automatic check: that failure is resolved. */
function resolvedBy(st) {
  const m = st && st.manual;
  return m && m.verified === true ? t('identity.resolved', { by: m.by || '', reason: m.reason || '' }) : '';
}

function renderVerdict(st) {
  const v = st && st.verification;
  el.verdict.dataset.verified = v ? String(v.verified === true) : '';
  el.verdict.dataset.reason = v && v.reason ? v.reason : '';
  el.verdict.dataset.automatic = v ? String(Boolean(v.automatic)) : '';
  el.verdict.dataset.score = v && v.score != null ? String(v.score) : '';
  const compared = Boolean(v) && typeof v.distance === 'number';
  // older panels carry no verdict: a comparison that did not match was a mismatch
  const verdict = !v ? '' : v.verdict || (v.verified ? 'match' : compared ? 'no_match' : 'inconclusive');
  el.verdict.dataset.verdict = verdict;
  let key = 'identity.verdict.none';
  if (verdict === 'match') key = 'identity.verdict.match';
  else if (verdict === 'no_match') key = 'identity.verdict.mismatch';
  else if (verdict === 'inconclusive') key = compared ? 'identity.verdict.uncertain' : 'identity.verdict.unusable';
  el.verdict.dataset.tone = { match: 'ok', no_match: 'error', inconclusive: 'warn' }[verdict] || '';
  setText(el.verdict, t(key));
  const parts = [];
  if (compared && v.reject_threshold != null) {
    parts.push(t('identity.scoreBand', {
      distance: v.distance.toFixed(2),
      accept: Number(v.threshold).toFixed(2),
      reject: Number(v.reject_threshold).toFixed(2),
      frames: v.frames ?? 1,
    }));
  } else if (compared) {
    parts.push(t('identity.score', {
      score: v.score ?? '?',
      distance: v.distance.toFixed(2),
      threshold: Number(v.threshold ?? (st && st.threshold) ?? 0).toFixed(2),
    }));
  } else if (v) {
    parts.push(serverText(v.message, v.message_zh));
  }
  if (v) parts.push(`${t(v.automatic ? 'identity.automatic' : 'identity.onRequest')} ${clockOf(v.at)}`.trim());
  const resolved = verdict && verdict !== 'match' ? resolvedBy(st) : '';
  el.verdict.dataset.resolved = String(Boolean(resolved));
  if (resolved) parts.push(resolved);
  setText(el.verdictDetail, parts.filter(Boolean).join(' · '));
}

function renderLiveness(st) {
  const l = st && st.liveness;
  const state = l && typeof l.state === 'string' ? l.state : '';
  el.liveness.dataset.state = state;
  el.liveness.dataset.tone = state === 'passed' ? 'ok' : state === 'failed' ? 'error' : '';
  let text = t('identity.liveness.none');
  if (state === 'running') text = t('identity.liveness.running', { step: stepLabel(l.current) });
  else if (state === 'passed' || state === 'failed') text = t(`identity.liveness.${state}`);
  setText(el.liveness, text);
  let detail = '';
  if (l && Array.isArray(l.steps)) {
    const done = new Set(Array.isArray(l.completed) ? l.completed : []);
    detail = l.steps.map((step) => `${done.has(step) ? '✓' : '·'} ${stepLabel(step)}`).join('  ');
  }
  if (state === 'failed') detail = [serverText(l.message, l.message_zh), detail].filter(Boolean).join(' · ');
  const resolved = state === 'failed' ? resolvedBy(st) : '';
  el.liveness.dataset.resolved = String(Boolean(resolved));
  if (resolved) detail = [detail, resolved].filter(Boolean).join(' · ');
  setText(el.livenessDetail, detail);
}

function renderManual(st) {
  const active = app.state === 'active';
  const reason = el.manualReason.value.trim();
  const usable = active && reason.length >= MANUAL_REASON_MIN && reason.length <= MANUAL_REASON_MAX
    && !(idPanel.pending && idPanel.pending.type === 'manual_verification');
  el.manualReason.disabled = !active;
  el.manualPass.disabled = !usable;
  el.manualFail.disabled = !usable;
  // with face checks off the server keeps the verdict but sends no panel: show what was sent
  const manual = (st && st.manual) || (!st && idPanel.manualSent
    ? { ...idPanel.manualSent, by: app.user && app.user.username } : null);
  el.manualResult.hidden = !manual && !idPanel.manualSent;
  if (manual) {
    el.manualResult.dataset.verified = String(manual.verified === true);
    setText(el.manualResult, t('identity.manualBy', {
      result: t(`identity.manual.${manual.verified === true}`), by: manual.by || '', reason: manual.reason || '',
    }));
  } else if (idPanel.manualSent) {
    el.manualResult.dataset.verified = '';
    setText(el.manualResult, t('identity.manualSent'));
  } else {
    el.manualResult.dataset.verified = '';
    setText(el.manualResult, '');
  }
}

function renderIdentity() {
  const st = app.state === 'active' ? idPanel.state : null;
  const consent = Boolean(st && st.face_consent);
  el.identityConsent.hidden = !st;
  el.identityConsent.dataset.consent = st ? String(consent) : '';
  el.identityConsent.className = `badge badge-${consent ? 'ok' : 'warn'}`;
  setText(el.identityConsent, st ? t(`identity.consent.${consent}`) : '');
  el.identityUnavailable.hidden = Boolean(st) && !idPanel.unavailable;
  renderPresence(st);
  renderPhotos(st);
  renderVerdict(st);
  renderLiveness(st);

  const busy = st && st.busy ? String(st.busy) : '';
  el.identityPanel.dataset.busy = busy;
  el.identityBusy.hidden = !busy;
  setText(el.identityBusyText, busy && has(`identity.busy.${busy}`) ? t(`identity.busy.${busy}`) : busy);

  const error = idPanel.error || (st && st.error) || null;
  el.identityError.hidden = !error;
  el.identityError.dataset.code = error ? error.code || '' : '';
  setText(el.identityError, error ? errorText(error.code, error.message) : '');

  const free = Boolean(st) && !idPanel.unavailable && !busy && idPanel.pending === null;
  el.identityVerify.disabled = !free || !consent || !st.reference;
  el.livenessStart.disabled = !free || !consent;
  el.captureReference.disabled = !free || !consent;
  el.captureSnapshot.disabled = !free;
  let hint = '';
  if (st && !consent) hint = t('identity.hint.consent');
  else if (st && !st.reference) hint = t('identity.hint.reference');
  setText(el.identityHint, hint);
  renderManual(st);
}

function onSnapshotPicked(event) {
  const button = event.target.closest('button[data-item]');
  if (!button) return;
  idPanel.pickedSnapshot = button.dataset.item;
  renderIdentity();
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
  bindSidebar();
  bindWrapUp();
  bindShortcuts();
  watchEvidence(el.reference);
  watchEvidence(el.snapshot);
  el.identityVerify.addEventListener('click', () => sendIdentity({ type: 'identity_verify' }));
  el.livenessStart.addEventListener('click', () => sendIdentity({ type: 'liveness_start' }));
  el.captureSnapshot.addEventListener('click', () => sendIdentity({ type: 'capture_snapshot' }));
  el.captureReference.addEventListener('click', () => sendIdentity({ type: 'capture_reference' }));
  el.manualReason.addEventListener('input', () => renderManual(app.state === 'active' ? idPanel.state : null));
  el.manualPass.addEventListener('click', () => sendManual(true));
  el.manualFail.addEventListener('click', () => sendManual(false));
  el.snapshotThumbs.addEventListener('click', onSnapshotPicked);

  setState('idle');
  renderAll();
  loadConfig();
  login.resume();
}

init();
