// The customer page: choose a business, check the devices, queue, talk, finish.
//
// Machine-readable state (data-testid="call-state", window.vcounter.state):
//   idle     not in a queue (choosing, checking devices, or back at the start)
//   waiting  joined: queued or being offered to an agent
//   active   call_started received: media negotiated with the hub
//   ended    call_ended received (or the session could not be kept)

import { CallController, publishState } from './call.js';
import {
  BUSINESSES, applyI18n, bindLangToggle, businessName, errorText, formatWait, loadBusinessNames,
  onLangChange, reasonText, t,
} from './i18n.js';
import { LocalMedia } from './media.js';
import { Signaling } from './signaling.js';
import { ErrorArea, Notice, byId, byTestId, moveInto, setText, showScreen, store } from './ui.js';

const SESSION_KEY = 'vcounter.customer.session';
/** How long to wait for the server to confirm a cancel or hangup before ending locally. */
const END_FALLBACK_MS = 3000;

const el = {
  statusText: byId('status-text'),
  langToggle: byTestId('lang-toggle'),
  banner: byTestId('reconnecting-banner'),
  bannerText: byId('banner-text'),
  businessButtons: BUSINESSES.map((b) => byTestId(`business-${b}`)),
  businessHint: byId('business-hint'),
  displayName: byTestId('display-name'),
  localVideo: byTestId('local-video'),
  prepareSlot: byId('prepare-video-slot'),
  queueSlot: byId('queue-video-slot'),
  callSlot: byId('call-video-slot'),
  micLevel: byTestId('mic-level'),
  deviceStatus: byId('device-status'),
  deviceError: byId('device-error'),
  deviceErrorText: byId('device-error-text'),
  retryDevices: byTestId('retry-devices'),
  join: byTestId('join-button'),
  recordingConsent: byTestId('recording-consent'),
  queueBusiness: byTestId('queue-business'),
  queuePosition: byTestId('queue-position'),
  queueWait: byTestId('queue-wait'),
  queueAgents: byTestId('queue-agents'),
  cancel: byTestId('cancel-button'),
  agentName: byTestId('agent-name'),
  callTimer: byId('call-timer'),
  hangup: byTestId('hangup-button'),
  endReason: byTestId('end-reason'),
  startOver: byTestId('start-over-button'),
};

const screens = {
  prepare: byId('screen-prepare'),
  queue: byId('screen-queue'),
  call: byId('screen-call'),
  ended: byId('screen-ended'),
};

const errors = new ErrorArea(byId('error-area'), byTestId('error-message'), byId('error-close'));
const notice = new Notice(byTestId('notice'));

const app = {
  state: 'idle',
  business: null,
  displayName: '',
  signaling: null,
  joining: false,
  /** {session_id, rejoin_token, business, display_name} while a session may be resumed */
  session: null,
  resuming: false,
  rejoinWindowS: 30,
  lastQueue: null,
  agentName: '',
  endTimer: null,
  endReason: null,
};

// --- state and rendering -------------------------------------------------------

function setState(state) {
  app.state = state;
  publishState(state);
  renderStatus();
}

function renderStatus() {
  setText(el.statusText, t(`state.${app.state}`));
}

function renderBusinessNames() {
  for (const node of document.querySelectorAll('[data-business-name]')) {
    node.textContent = businessName(node.dataset.businessName);
  }
  if (app.business) setText(el.queueBusiness, businessName(app.business));
}

function renderQueue() {
  const q = app.lastQueue;
  setText(el.queuePosition, q ? String(q.position) : '');
  setText(el.queueWait, q ? formatWait(q.estimated_wait_s) : '');
  setText(el.queueAgents, q ? t('queue.agents', { n: q.agents_available }) : '');
}

function renderJoinButton() {
  el.join.disabled = !devices.stream || devices.problem !== null || app.joining || app.resuming
    || !el.recordingConsent.checked;
  setText(el.join, t(app.joining || app.resuming ? 'customer.joining' : 'customer.join'));
}

function renderDeviceStatus() {
  if (devices.problem) {
    setText(el.deviceStatus, '');
    setText(el.deviceErrorText, t(`device.${devices.problem}`));
    el.deviceError.hidden = false;
  } else {
    el.deviceError.hidden = true;
    setText(el.deviceStatus, devices.stream ? t('device.ok') : devices.starting ? t('device.starting') : '');
  }
}

function renderEnded() {
  setText(el.endReason, reasonText('reason', app.endReason));
}

function renderCallTimer() {
  setText(el.callTimer, call.clockText());
}

function renderAll() {
  renderStatus();
  renderBusinessNames();
  renderQueue();
  renderJoinButton();
  renderDeviceStatus();
  renderEnded();
  notice.refresh();
  call.refresh();
}

function showBanner(textKey) {
  el.bannerText.dataset.i18n = textKey;
  setText(el.bannerText, t(textKey));
  el.banner.hidden = false;
}

function hideBanner() {
  el.banner.hidden = true;
}

function placeLocalVideo(screen) {
  const slot = { queue: el.queueSlot, call: el.callSlot }[screen] || el.prepareSlot;
  moveInto(slot, el.localVideo);
}

function goTo(screen) {
  placeLocalVideo(screen);
  showScreen(screens, screen);
}

// --- devices -------------------------------------------------------------------

const devices = new LocalMedia({
  video: el.localVideo,
  onLevel: (level) => {
    el.micLevel.value = level;
  },
  onChange: () => {
    renderDeviceStatus();
    renderJoinButton();
  },
});

const call = new CallController({
  devices,
  errors,
  send,
  isActive: () => app.state === 'active',
  isConnected: () => app.signaling !== null && app.signaling.isOpen,
  onTick: renderCallTimer,
  // after the rejoin, call_started comes again and a new offer is sent then
  onOfferNotSent: () => console.info('offer not sent: signaling is reconnecting'),
});

// --- session storage -------------------------------------------------------------

function saveSession() {
  if (app.session) store.set(SESSION_KEY, app.session);
}

function forgetSession() {
  app.session = null;
  store.remove(SESSION_KEY);
}

// --- signaling -----------------------------------------------------------------

function connect() {
  if (app.signaling) app.signaling.close();
  const sig = new Signaling('/ws/customer', {
    reconnectWindowMs: app.rejoinWindowS * 1000,
    shouldReconnect: () => app.session !== null && app.state !== 'ended',
  });
  app.signaling = sig;
  sig.on('open', () => {
    if (app.session) {
      sig.send({ type: 'rejoin', session_id: app.session.session_id, rejoin_token: app.session.rejoin_token });
    } else {
      sig.send({ type: 'join', business: app.business, display_name: app.displayName,
                 recording_consent: el.recordingConsent.checked });
    }
  });
  sig.on('message', onMessage);
  sig.on('reconnecting', () => {
    if (!app.resuming) showBanner('banner.reconnecting');
  });
  sig.on('giveup', () => {
    hideBanner();
    if (app.resuming) {
      abandonResume('error.unreachable');
    } else if (app.state === 'waiting' || app.state === 'active') {
      finish('connection_lost');
    }
  });
  sig.on('closed', ({ opened }) => {
    hideBanner();
    if (app.resuming) {
      abandonResume(opened ? null : 'error.unreachable');
    } else if (app.state === 'waiting' || app.state === 'active') {
      finish(app.endReason || 'connection_lost');
    } else if (app.joining) {
      app.joining = false;
      renderJoinButton();
      if (!opened) errors.show(t('error.unreachable'));
    }
  });
  sig.connect();
}

function send(message) {
  return app.signaling !== null && app.signaling.send(message);
}

function onMessage(msg) {
  switch (msg.type) {
    case 'joined':
      onJoined(msg);
      break;
    case 'rejoined':
      onRejoined(msg);
      break;
    case 'queue_update':
      app.lastQueue = msg;
      renderQueue();
      break;
    case 'call_started':
      onCallStarted(msg);
      break;
    case 'answer':
      call.onAnswer(msg);
      break;
    case 'peer_reconnecting':
      notice.show(() => t('notice.peerReconnectingAgent'), { tone: 'warn' });
      break;
    case 'peer_reconnected':
      notice.show(() => t('notice.peerReconnected'), { timeoutMs: 4000 });
      break;
    case 'requeued':
      onRequeued();
      break;
    case 'call_ended':
      finish(msg.reason);
      break;
    case 'error':
      onServerError(msg);
      break;
    default:
      break;
  }
}

function onJoined(msg) {
  app.joining = false;
  app.session = {
    session_id: msg.session_id,
    rejoin_token: msg.rejoin_token,
    business: msg.business || app.business,
    display_name: app.displayName,
  };
  saveSession();
  if (Number.isFinite(msg.rejoin_window_s) && msg.rejoin_window_s > 0) {
    app.rejoinWindowS = msg.rejoin_window_s;
    app.signaling.setReconnectWindow(msg.rejoin_window_s * 1000);
  }
  app.lastQueue = null;
  renderQueue();
  renderBusinessNames();
  renderJoinButton();
  setState('waiting');
  goTo('queue');
}

function onRejoined(msg) {
  const wasActive = app.state === 'active';
  const wasResuming = app.resuming;
  app.resuming = false;
  hideBanner();
  renderJoinButton();
  if (wasResuming) notice.hide();
  if (msg.state === 'queued' || msg.state === 'offered') {
    if (wasActive) {
      // the agent dropped while we were away: the requeued message went nowhere
      closeCall();
      notice.show(() => t('notice.requeued'), { tone: 'warn', timeoutMs: 15000 });
    }
    app.lastQueue = null;
    renderQueue();
    setState('waiting');
    goTo('queue');
  }
  // 'active': call_started follows, and a new offer is sent then
}

function abandonResume(errorKey) {
  app.resuming = false;
  forgetSession();
  notice.hide();
  hideBanner();
  renderJoinButton();
  setState('idle');
  goTo('prepare');
  if (errorKey) errors.show(t(errorKey));
}

function onServerError(msg) {
  const code = msg.code;
  if (code === 'bad_sdp' && call.retryAfterBadSdp()) return;
  if (code === 'forbidden' && app.resuming) {
    // the server no longer knows this session (or the token): start fresh
    abandonResume(null);
    errors.show(t('reason.session_lost'));
    return;
  }
  if (code === 'session_ended') {
    app.resuming = false;
    return; // call_ended came just before with the reason
  }
  if (code === 'replaced') {
    app.endReason = 'replaced';
    finish('replaced');
    return;
  }
  if (msg.fatal && app.resuming) {
    abandonResume(null);
  } else if (msg.fatal && (app.state === 'waiting' || app.state === 'active')) {
    app.endReason = code === 'forbidden' ? 'session_lost' : 'connection_lost';
    if (code === 'forbidden') return; // the end screen explains it
  }
  errors.show(errorText(code, msg.message));
}

// --- the call ------------------------------------------------------------------

function onCallStarted(msg) {
  clearTimeout(app.endTimer);
  app.endTimer = null;
  el.cancel.disabled = false;
  app.resuming = false;
  hideBanner();
  notice.hide();
  app.agentName = msg.peer && typeof msg.peer.display_name === 'string' ? msg.peer.display_name : '';
  setText(el.agentName, app.agentName);
  call.begin(msg);
  setState('active');
  renderJoinButton();
  goTo('call');
  call.startMedia();
}

function closeCall() {
  call.close();
  renderCallTimer();
}

function onRequeued() {
  closeCall();
  app.lastQueue = null;
  renderQueue();
  setState('waiting');
  goTo('queue');
  notice.show(() => t('notice.requeued'), { tone: 'warn', timeoutMs: 15000 });
}

function finish(reason) {
  clearTimeout(app.endTimer);
  app.endTimer = null;
  closeCall();
  forgetSession();
  app.resuming = false;
  app.joining = false;
  app.endReason = reason || 'unknown';
  if (app.signaling) app.signaling.close();
  app.signaling = null;
  hideBanner();
  notice.hide();
  el.cancel.disabled = false;
  renderEnded();
  renderJoinButton();
  setState('ended');
  goTo('ended');
}

// --- user actions --------------------------------------------------------------

function selectBusiness(business) {
  app.business = business;
  for (const button of el.businessButtons) {
    button.setAttribute('aria-pressed', String(button.dataset.business === business));
  }
  el.businessHint.hidden = true;
}

/** The display name as the server accepts it: 1-64 chars, no control characters or < >. */
function cleanDisplayName(raw) {
  // eslint-disable-next-line no-control-regex
  const cleaned = raw.replace(/[\u0000-\u001f<>]/g, '').trim().slice(0, 64).trim();
  return cleaned || t('customer.defaultName');
}

function onJoinClick() {
  if (!app.business) {
    el.businessHint.hidden = false;
    el.businessButtons[0].focus();
    return;
  }
  if (!devices.stream || app.joining) return;
  errors.clear();
  app.displayName = cleanDisplayName(el.displayName.value);
  app.joining = true;
  app.endReason = null;
  renderJoinButton();
  connect();
}

function onCancelClick() {
  if (app.state !== 'waiting') return;
  if (!send({ type: 'cancel' })) {
    finish('customer_cancelled');
    return;
  }
  el.cancel.disabled = true;
  clearTimeout(app.endTimer);
  app.endTimer = setTimeout(() => {
    // the server did not confirm; a call that started meanwhile is left alone
    if (app.state === 'waiting') finish('customer_cancelled');
  }, END_FALLBACK_MS);
}

function onHangupClick() {
  if (app.state !== 'active') return;
  call.closePeer();
  if (!send({ type: 'hangup' })) {
    finish('customer_hangup');
    return;
  }
  clearTimeout(app.endTimer);
  app.endTimer = setTimeout(() => finish('customer_hangup'), END_FALLBACK_MS);
}

function onStartOver() {
  app.endReason = null;
  app.lastQueue = null;
  app.agentName = '';
  el.cancel.disabled = false;
  setText(el.agentName, '');
  notice.hide();
  errors.clear();
  renderQueue();
  renderEnded();
  setState('idle');
  goTo('prepare');
  if (!devices.stream || devices.problem) devices.start();
  renderJoinButton();
}

async function loadConfig() {
  const config = await loadBusinessNames();
  if (!config) return;
  if (Number.isFinite(config.rejoin_window_s) && config.rejoin_window_s > 0) {
    app.rejoinWindowS = config.rejoin_window_s;
  }
  renderBusinessNames();
}

// --- start ---------------------------------------------------------------------

function init() {
  bindLangToggle(el.langToggle);
  applyI18n();
  onLangChange(renderAll);
  for (const button of el.businessButtons) {
    button.addEventListener('click', () => selectBusiness(button.dataset.business));
  }
  el.join.addEventListener('click', onJoinClick);
  el.recordingConsent.addEventListener('change', renderJoinButton);
  el.retryDevices.addEventListener('click', () => devices.start());
  el.cancel.addEventListener('click', onCancelClick);
  el.hangup.addEventListener('click', onHangupClick);
  el.startOver.addEventListener('click', onStartOver);
  el.displayName.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') onJoinClick();
  });

  setState('idle');
  renderAll();
  loadConfig();
  devices.start();

  const saved = store.get(SESSION_KEY);
  if (saved && typeof saved.session_id === 'string' && typeof saved.rejoin_token === 'string') {
    // a reload during a session: take the place in the queue (or the call) back
    app.session = saved;
    app.business = BUSINESSES.includes(saved.business) ? saved.business : null;
    app.displayName = typeof saved.display_name === 'string' ? saved.display_name : '';
    if (app.business) selectBusiness(app.business);
    app.resuming = true;
    renderJoinButton();
    notice.show(() => t('notice.resuming'));
    devices.ready.then(connect);
  }
}

init();
