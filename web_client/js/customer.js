// The customer page: choose a business, check the devices, queue, talk, finish.
//
// Machine-readable state (data-testid="call-state", window.vcounter.state):
//   idle     not in a queue (choosing, checking devices, or back at the start)
//   waiting  joined: queued or being offered to an agent
//   active   call_started received: media negotiated with the hub
//   ended    call_ended received (or the session could not be kept)
//
// Identity: a separate, optional face-verification consent (join
// face_consent, later face_consent {accepted}), the ID photo upload
// (POST /api/identity/{session}/reference with the rejoin token) in the
// waiting screen and the call view, and what the server's face checks tell the
// customer during the call: the liveness instruction, its result, and the
// verification result (what to fix when the picture is not good enough).
//
// Business flows (js/customer_flow.js): the server's flow_state shows
// as the current step and what it needs from the customer; the sealed receipt
// (receipt) is kept for download, also on the end screen.
//
// Layout: <body data-screen> names the screen shown; the call view fits the
// window (no page scrolling), the step panel's buttons always in sight. During
// a liveness challenge the self view grows and carries the instruction with a
// countdown, read aloud where the browser can speak. The large-text mode
// (data-testid="large-text-toggle") is kept in localStorage.
//
// Plain words only: the customer never sees a session id, a receipt id, an
// error code or the server's own English sentences; an error without words of
// ours says so in general terms (customerError()).

import { CallController, publishState } from './call.js';
import { CustomerFlow } from './customer_flow.js';
import { outcomeText } from './flow.js';
import {
  applyI18n, bindLangToggle, businessDescription, businessName, businessTypes, errorText, formatWait, has,
  loadBusinessNames, onLangChange, reasonText, serverText, t,
} from './i18n.js';
import { LocalMedia } from './media.js';
import { Signaling } from './signaling.js';
import { ErrorArea, Notice, byId, byTestId, moveInto, setText, showScreen, store } from './ui.js';

const SESSION_KEY = 'vcounter.customer.session';
/** How long to wait for the server to confirm a cancel or hangup before ending locally. */
const END_FALLBACK_MS = 3000;
/** The server refuses ID photos above 15 MB (docs/identity.md): don't send one over a phone's network. */
const ID_PHOTO_MAX_BYTES = 15 * 1024 * 1024;
/** How long the liveness outcome and a verification notice stay over the video. */
const LIVENESS_RESULT_MS = 6000;
const VERIFICATION_NOTICE_MS = 8000;
/** At least this wide, the call view opens its identity area by itself (phones keep it folded). */
const WIDE_SCREEN = '(min-width: 601px)';
/** localStorage: '1' while the large-text mode is on */
const LARGE_TEXT_KEY = 'vcounter.largeText';

const el = {
  statusText: byId('status-text'),
  langToggle: byTestId('lang-toggle'),
  banner: byTestId('reconnecting-banner'),
  bannerText: byId('banner-text'),
  /** the business cards, built from GET /api/config (businessCards()) */
  businessGrid: byId('business-grid'),
  businessCard: byId('business-card'),
  businessIcons: byId('business-icons'),
  businessUnavailable: byId('business-unavailable'),
  businessHint: byId('business-hint'),
  appointmentNote: byTestId('appointment-note'),
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
  joinReason: byTestId('join-disabled-reason'),
  largeText: byTestId('large-text-toggle'),
  recordingConsent: byTestId('recording-consent'),
  faceConsent: byTestId('face-consent'),
  idBox: byId('id-box'),
  queueIdSlot: byId('queue-id-slot'),
  callIdSlot: byId('call-id-slot'),
  callIdDetails: byId('call-id-details'),
  faceConsentToggle: byTestId('face-consent-toggle'),
  faceOffHint: byId('face-off-hint'),
  idUpload: byId('id-upload'),
  idPhotoInput: byTestId('id-photo-input'),
  idPhotoLabel: byId('id-photo-label'),
  idPhotoPreview: byId('id-photo-preview'),
  idPhotoStatus: byTestId('id-photo-status'),
  callScreen: byId('screen-call'),
  livenessInstruction: byTestId('liveness-instruction'),
  livenessStepText: byId('liveness-step-text'),
  livenessMeta: byId('liveness-meta'),
  livenessBarFill: byId('liveness-bar-fill'),
  livenessCount: byTestId('liveness-countdown'),
  livenessResult: byTestId('liveness-result'),
  verificationResult: byTestId('verification-result'),
  queueBusiness: byTestId('queue-business'),
  queuePosition: byTestId('queue-position'),
  queueWait: byTestId('queue-wait'),
  queueAgents: byTestId('queue-agents'),
  queueStatus: byTestId('queue-status'),
  callbackForm: byId('callback-form'),
  callbackPhone: byId('callback-phone'),
  callbackError: byId('callback-error'),
  callbackButton: byTestId('callback-request'),
  cancel: byTestId('cancel-button'),
  agentName: byTestId('agent-name'),
  callTimer: byId('call-timer'),
  hangup: byTestId('hangup-button'),
  endReason: byTestId('end-reason'),
  endedTitle: byId('ended-title'),
  endedIcon: byTestId('ended-icon'),
  endedOutcome: byTestId('ended-outcome'),
  hangupConfirm: byTestId('hangup-confirm'),
  hangupConfirmButton: byTestId('hangup-confirm-button'),
  hangupKeep: byTestId('hangup-keep'),
  flowPanel: byId('flow-panel'),
  stepScroll: byId('step-scroll'),
  endedReceiptSlot: byId('ended-receipt-slot'),
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
  /** an appointment the bank booked: {token, business, displayName, reference, used} or {invalid} */
  appointment: null,
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

/** The customer's side of the face checks during one session. */
const identity = {
  /** the face-verification consent the server has (join, or face_consent later) */
  consent: false,
  /** the ID photo: state '' | 'uploading' | 'ok' | 'error', and why it failed */
  photo: { state: '', code: null, message: '', status: 0 },
  uploadSeq: 0,
  previewUrl: null,
  /** the running challenge: {steps, instructions: {step: {en, zh}}, limitS, current, completed, stepStartedAt} */
  liveness: null,
  livenessTimer: null,
  /** the challenge step last read aloud (once per step) */
  spokenStep: null,
  /** the latest liveness_result and verification_result, while shown */
  livenessResult: null,
  livenessResultTimer: null,
  verification: null,
  verificationTimer: null,
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
  for (const node of document.querySelectorAll('[data-business-desc]')) {
    node.textContent = businessDescription(node.dataset.businessDesc);
  }
  if (app.business) setText(el.queueBusiness, businessName(app.business));
}

/** The business cards shown (one per business the server offers). */
function businessButtons() {
  return [...el.businessGrid.querySelectorAll('button[data-business]')];
}

/** One card per business of GET /api/config, in its order: name from the server, icon and description by type. */
function buildBusinessCards(types) {
  const cards = types.map((type) => {
    const card = el.businessCard.content.firstElementChild.cloneNode(true);
    card.dataset.business = type;
    card.dataset.testid = `business-${type}`;
    const icons = el.businessIcons.content;
    const icon = icons.querySelector(`[data-business-icon="${CSS.escape(type)}"]`)
      || icons.querySelector('[data-business-icon=""]');
    card.querySelector('.business-icon').append(icon.cloneNode(true));
    card.querySelector('.business-name').dataset.businessName = type;
    card.querySelector('.business-desc').dataset.businessDesc = type;
    card.addEventListener('click', () => selectBusiness(type));
    return card;
  });
  el.businessGrid.replaceChildren(...cards);
  el.businessGrid.removeAttribute('aria-busy');
  el.businessUnavailable.hidden = types.length > 0;
  renderBusinessNames();
  renderBusinessCards();
}

/** Which card is chosen, and which an appointment leaves open. */
function renderBusinessCards() {
  const a = app.appointment;
  const booked = Boolean(a && a.token && !a.used);
  for (const button of businessButtons()) {
    button.setAttribute('aria-pressed', String(button.dataset.business === app.business));
    button.disabled = booked && button.dataset.business !== a.business;
  }
}

function renderQueue() {
  const q = app.lastQueue;
  setText(el.queuePosition, q ? String(q.position) : '');
  setText(el.queueWait, q ? formatWait(q.estimated_wait_s) : '');
  setText(el.queueAgents, q ? t('queue.agents', { n: q.agents_available }) : '');
  // an offer of this customer failed: another agent is being tried
  const transferring = Boolean(q && q.status === 'transferring');
  el.queueStatus.dataset.status = transferring ? 'transferring' : 'waiting';
  el.queueStatus.hidden = !transferring;
  setText(el.queueStatus, transferring ? t('queue.transferring') : '');
  // after a long wait the customer may leave a number instead (once shown, it stays)
  if (q && q.long_wait) el.callbackForm.hidden = false;
  if (!q && app.state !== 'waiting') el.callbackForm.hidden = true;
}

/** Digits as the server takes them (spaces and hyphens dropped): 7 to 15, an optional leading +. */
const PHONE = /^\+?[0-9]{7,15}$/;

/** The call-back request: stored by the server, which then ends the session (call_ended callback_requested). */
async function onCallbackSubmit(event) {
  event.preventDefault();
  const session = app.session;
  if (!session || app.state !== 'waiting') return;
  const phone = el.callbackPhone.value.replace(/[ -]/g, '');
  const showError = (key) => {
    el.callbackError.hidden = false;
    setText(el.callbackError, t(key));
    el.callbackPhone.setAttribute('aria-invalid', 'true');
  };
  if (!PHONE.test(phone)) {
    showError('callback.badPhone');
    return;
  }
  el.callbackError.hidden = true;
  el.callbackPhone.removeAttribute('aria-invalid');
  el.callbackButton.disabled = true;
  let status = 0;
  try {
    const response = await fetch(`/api/callbacks/${encodeURIComponent(session.session_id)}`, {
      method: 'POST',
      body: JSON.stringify({ phone }),
      headers: {
        'Content-Type': 'application/json',
        'X-Session-Token': session.rejoin_token,
        Accept: 'application/json',
      },
      credentials: 'same-origin',
      cache: 'no-store',
    });
    status = response.status;
  } catch {
    status = 0;
  }
  el.callbackButton.disabled = false;
  if (status === 201) {
    // call_ended follows on the socket; end here too if it does not come
    clearTimeout(app.endTimer);
    app.endTimer = setTimeout(() => {
      if (app.state === 'waiting') finish('callback_requested');
    }, END_FALLBACK_MS);
  } else if (app.state === 'waiting') {
    showError(status === 400 ? 'callback.badPhone' : status === 0 ? 'error.unreachable' : 'callback.failed');
  }
}

/** Why the join button cannot be used now: '' when it can ('connecting' is said by the button). */
function joinBlocker() {
  if (app.joining || app.resuming) return 'connecting';
  if (devices.problem !== null) return 'devices';
  if (!devices.stream) return 'starting';
  if (!el.recordingConsent.checked) return 'consent';
  return '';
}

function renderJoinButton() {
  const blocker = joinBlocker();
  el.join.disabled = blocker !== '';
  setText(el.join, t(blocker === 'connecting' ? 'customer.joining' : 'customer.join'));
  const said = blocker !== '' && blocker !== 'connecting';
  el.joinReason.hidden = !said;
  el.joinReason.dataset.reason = said ? blocker : '';
  setText(el.joinReason, said ? t(`join.reason.${blocker}`) : '');
}

// --- large text ------------------------------------------------------------------

function largeTextOn() {
  try {
    return localStorage.getItem(LARGE_TEXT_KEY) === '1';
  } catch {
    return false;
  }
}

function applyLargeText(on) {
  document.documentElement.dataset.text = on ? 'large' : '';
  el.largeText.setAttribute('aria-pressed', String(on));
}

function onLargeTextToggle() {
  const on = document.documentElement.dataset.text !== 'large';
  try {
    if (on) localStorage.setItem(LARGE_TEXT_KEY, '1');
    else localStorage.removeItem(LARGE_TEXT_KEY);
  } catch {
    // not kept: the mode holds for this page only
  }
  applyLargeText(on);
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

/** The end screen: a tick and what was opened or signed only when the business was done. */
function renderEnded() {
  setText(el.endReason, reasonText('reason', app.endReason));
  const result = flow.result;
  const done = Boolean(result && result.status === 'completed');
  el.endedIcon.dataset.done = String(done);
  const key = done ? 'ended.titleDone' : result ? 'ended.titleUnfinished' : 'ended.title';
  el.endedTitle.dataset.i18n = key;
  setText(el.endedTitle, t(key));
  const outcome = done ? outcomeText(result.outcome) : '';
  el.endedOutcome.hidden = !outcome;
  setText(el.endedOutcome, outcome);
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
  renderIdentity();
  renderAppointment();
  notice.refresh();
  call.refresh();
  flow.refresh();
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
  placeIdBox(screen);
  document.body.dataset.screen = screen;
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
  role: 'customer',
  devices,
  errors,
  send,
  isActive: () => app.state === 'active',
  isConnected: () => app.signaling !== null && app.signaling.isOpen,
  onTick: renderCallTimer,
  // after the rejoin, call_started comes again and a new offer is sent then
  onOfferNotSent: () => console.info('offer not sent: signaling is reconnecting'),
});

const flow = new CustomerFlow({
  send,
  faceConsent: () => identity.consent,
  onFaceConsent: setFaceConsent,
});

// --- session storage -------------------------------------------------------------

function saveSession() {
  if (!app.session) return;
  app.session.face_consent = identity.consent;
  app.session.id_photo = identity.photo.state === 'ok';
  store.set(SESSION_KEY, app.session);
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
      const join = { type: 'join', business: app.business, display_name: app.displayName,
                     recording_consent: el.recordingConsent.checked, face_consent: identity.consent };
      if (app.appointment) join.appointment = app.appointment.token;
      sig.send(join);
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
    case 'media_lost':
    case 'media_restored':
    case 'media_restart':
      call.onMediaMessage(msg);
      break;
    case 'requeued':
      onRequeued();
      break;
    case 'call_ended':
      finish(msg.reason);
      break;
    case 'liveness_challenge':
      onLivenessChallenge(msg);
      break;
    case 'liveness_progress':
      onLivenessProgress(msg);
      break;
    case 'liveness_result':
      onLivenessResult(msg);
      break;
    case 'verification_result':
      onVerificationResult(msg);
      break;
    case 'flow_state':
      flow.onState(msg);
      break;
    case 'document':
      flow.onDocument(msg);
      break;
    case 'receipt':
      flow.onReceipt(msg);
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
  if (app.appointment) {
    // the appointment is used now; the bank's ID photo serves once face checks are agreed to
    const adopted = app.appointment.reference && identity.consent;
    if (adopted) identity.photo = { state: 'ok', code: 'appointment', message: '', status: 0 };
    app.appointment = { ...app.appointment, used: true, adopted };
    renderAppointment();
    renderIdentity();
  }
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

/** An error frame in the customer's words: ours for known codes, never the server's sentence. */
function customerError(code) {
  return typeof code === 'string' && has(`error.${code}`) ? errorText(code, '') : t('error.generic');
}

function onServerError(msg) {
  const code = msg.code;
  if (code === 'bad_sdp' && call.retryAfterBadSdp()) return;
  if (code === 'step_refused' || code === 'flows_unavailable') {
    flow.onError(t(code === 'step_refused' ? 'flow.refused' : 'error.flows_unavailable'));
    return;
  }
  if (code === 'forbidden' && app.resuming) {
    // the server no longer knows this session (or the token): start fresh
    abandonResume(null);
    errors.show(t('reason.session_lost'));
    return;
  }
  if (code === 'appointment_invalid' && app.joining && !app.session) {
    // the link was used, cancelled or expired meanwhile: join the queue like anyone else
    app.joining = false;
    if (app.signaling) app.signaling.close();
    app.signaling = null;
    app.appointment = { invalid: true };
    renderAppointment();
    renderJoinButton();
    errors.show(customerError(code));
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
  errors.show(customerError(code));
}

// --- the call ------------------------------------------------------------------

function onCallStarted(msg) {
  const newCall = app.state !== 'active';
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
  // room to upload the ID photo on a desk; folded under the video on a phone
  if (newCall) el.callIdDetails.open = window.matchMedia(WIDE_SCREEN).matches;
  flow.placeReceipt(el.stepScroll);
  call.startMedia();
}

function closeCall() {
  call.close();
  stopLiveness();
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
  closeHangupConfirm();
  clearTimeout(app.endTimer);
  app.endTimer = null;
  closeCall();
  resetIdentity();
  flow.reset({ keepReceipt: true });
  flow.placeReceipt(el.endedReceiptSlot);
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

// --- identity: face consent, ID photo, liveness, verification ------------------------

/** The consent toggle and the ID photo live in the waiting screen and in the call view. */
function placeIdBox(screen) {
  const slot = { queue: el.queueIdSlot, call: el.callIdSlot }[screen];
  el.idBox.hidden = !slot;
  el.callIdDetails.hidden = screen !== 'call';
  if (slot) moveInto(slot, el.idBox);
  renderIdBox();
}

function renderIdentity() {
  renderIdBox();
  renderLiveness();
  renderStageResults();
}

function renderIdBox() {
  el.faceConsentToggle.checked = identity.consent;
  el.faceOffHint.hidden = identity.consent;
  el.idUpload.hidden = !identity.consent;
  const { state } = identity.photo;
  el.idPhotoStatus.dataset.state = state;
  el.idPhotoInput.disabled = state === 'uploading' || !app.session;
  setText(el.idPhotoLabel, t(state === 'ok' ? 'idPhoto.replace' : 'idPhoto.choose'));
  setText(el.idPhotoStatus, photoStatusText());
  el.idPhotoPreview.hidden = !identity.previewUrl;
}

function photoStatusText() {
  const { state, code, message, status } = identity.photo;
  if (state === 'uploading') return t('idPhoto.uploading');
  if (state === 'ok') return t(code === 'appointment' ? 'idPhoto.fromBank' : 'idPhoto.ok');
  if (state !== 'error') return '';
  if (code && has(`idPhoto.error.${code}`)) return t(`idPhoto.error.${code}`);
  // a code we have no words for: general ones (the server's sentence and status are for the log)
  if (message || status) console.info('ID photo refused', status, code, message);
  return t('idPhoto.error.generic');
}

function setPhoto(state, { code = null, message = '', status = 0 } = {}) {
  identity.photo = { state, code, message, status };
  saveSession();
  renderIdBox();
}

function setPreview(file) {
  if (identity.previewUrl) URL.revokeObjectURL(identity.previewUrl);
  identity.previewUrl = file ? URL.createObjectURL(file) : null;
  if (identity.previewUrl) el.idPhotoPreview.src = identity.previewUrl;
  else el.idPhotoPreview.removeAttribute('src');
}

function onFaceConsentToggle() {
  const accepted = el.faceConsentToggle.checked;
  if (!app.session || !send({ type: 'face_consent', accepted })) {
    el.faceConsentToggle.checked = identity.consent;
    errors.show(t('error.unreachable'));
    return;
  }
  setFaceConsent(accepted);
}

/** The consent the server now has (the toggle, or the flow's consent step). */
function setFaceConsent(accepted) {
  const withdrawn = identity.consent && !accepted;
  identity.consent = accepted;
  if (withdrawn) {
    // withdrawn: the server stops using the photo; a new one is needed after agreeing again
    identity.uploadSeq += 1;
    identity.photo = { state: '', code: null, message: '', status: 0 };
    setPreview(null);
  } else if (accepted && bankPhotoWaiting()) {
    // the server now takes the ID photo the bank supplied with the appointment
    app.appointment.adopted = true;
    identity.photo = { state: 'ok', code: 'appointment', message: '', status: 0 };
  }
  saveSession();
  renderIdBox();
}

/** The bank supplied an ID photo with the appointment this session came from, not yet taken up. */
function bankPhotoWaiting() {
  const a = app.appointment;
  return Boolean(a && a.used && a.reference && !a.adopted);
}

function onIdPhotoSelected() {
  const file = el.idPhotoInput.files && el.idPhotoInput.files[0];
  el.idPhotoInput.value = ''; // choosing the same file again uploads it again
  if (file) uploadIdPhoto(file);
}

/** POST the photo as the raw body, proving the session with its rejoin token. */
async function uploadIdPhoto(file) {
  const session = app.session;
  if (!session || !identity.consent) return;
  const seq = ++identity.uploadSeq;
  setPreview(file);
  if (file.size === 0) {
    setPhoto('error', { code: 'bad_image' });
    return;
  }
  if (file.size > ID_PHOTO_MAX_BYTES) {
    setPhoto('error', { code: 'image_too_large' });
    return;
  }
  setPhoto('uploading');
  let response;
  let body = null;
  try {
    response = await fetch(`/api/identity/${encodeURIComponent(session.session_id)}/reference`, {
      method: 'POST',
      body: file,
      headers: {
        'Content-Type': file.type || 'application/octet-stream',
        'X-Session-Token': session.rejoin_token,
        Accept: 'application/json',
      },
      credentials: 'same-origin',
      cache: 'no-store',
    });
    body = await response.json().catch(() => null);
  } catch (err) {
    console.info('ID photo upload failed', err);
    if (seq === identity.uploadSeq) setPhoto('error', { code: 'unreachable' });
    return;
  }
  if (seq !== identity.uploadSeq || app.session !== session) return;
  if (response.ok) {
    setPhoto('ok');
    return;
  }
  let code = body && typeof body.error === 'string' ? body.error : null;
  if (response.status === 403) code = 'forbidden';
  else if (response.status === 404) code = 'not_found';
  else if (response.status === 413) code = 'image_too_large';
  setPhoto('error', { code, message: body && typeof body.message === 'string' ? body.message : '',
                      status: response.status });
}

function onLivenessChallenge(msg) {
  const steps = Array.isArray(msg.steps) ? msg.steps.map(String) : [];
  if (!steps.length) return;
  const instructions = {};
  for (const item of Array.isArray(msg.instructions) ? msg.instructions : []) {
    if (item && typeof item.step === 'string') instructions[item.step] = { en: item.en, zh: item.zh };
  }
  hideLivenessResult();
  el.livenessResult.dataset.passed = ''; // the outcome of this challenge is yet to come
  identity.liveness = {
    steps,
    instructions,
    limitS: Number(msg.step_time_limit_s) > 0 ? Number(msg.step_time_limit_s) : 8,
    current: steps[0],
    completed: [],
    stepStartedAt: Date.now(),
  };
  clearInterval(identity.livenessTimer);
  identity.livenessTimer = setInterval(renderLivenessClock, 250);
  renderLiveness();
}

function onLivenessProgress(msg) {
  const live = identity.liveness;
  if (!live) return;
  const current = typeof msg.current === 'string' ? msg.current : null;
  if (current !== live.current) live.stepStartedAt = Date.now();
  live.current = current;
  live.completed = Array.isArray(msg.completed) ? msg.completed.map(String) : live.completed;
  renderLiveness();
}

function onLivenessResult(msg) {
  stopLiveness();
  clearTimeout(identity.livenessResultTimer);
  identity.livenessResult = { passed: msg.passed === true, message: msg.message, message_zh: msg.message_zh };
  identity.livenessResultTimer = setTimeout(hideLivenessResult, LIVENESS_RESULT_MS);
  renderStageResults();
  speak(el.livenessResult.textContent);
}

function onVerificationResult(msg) {
  clearTimeout(identity.verificationTimer);
  identity.verification = {
    verified: msg.verified === true,
    reason: typeof msg.reason === 'string' ? msg.reason : '',
    message: msg.message,
    message_zh: msg.message_zh,
  };
  identity.verificationTimer = setTimeout(() => {
    identity.verification = null;
    renderStageResults();
  }, VERIFICATION_NOTICE_MS);
  renderStageResults();
}

function stopLiveness() {
  clearInterval(identity.livenessTimer);
  identity.livenessTimer = null;
  identity.liveness = null;
  identity.spokenStep = null;
  renderLiveness();
}

/** Read a prompt aloud in the page's language, where the browser can speak (not all can). */
function speak(text) {
  const synth = window.speechSynthesis;
  if (!text || !synth || typeof window.SpeechSynthesisUtterance !== 'function') return;
  try {
    synth.cancel(); // the newest prompt only
    const utterance = new window.SpeechSynthesisUtterance(text);
    utterance.lang = document.documentElement.lang || 'zh-CN';
    utterance.rate = 0.9;
    synth.speak(utterance);
  } catch (err) {
    console.info('speech is not available', err);
  }
}

function hideLivenessResult() {
  clearTimeout(identity.livenessResultTimer);
  identity.livenessResult = null;
  renderStageResults();
}

function stepText(step) {
  const given = identity.liveness && identity.liveness.instructions[step];
  const text = given ? serverText(given.en, given.zh) : '';
  return text || (has(`liveness.step.${step}`) ? t(`liveness.step.${step}`) : step);
}

function renderLiveness() {
  const live = identity.liveness;
  const step = live ? live.current : null;
  el.livenessInstruction.hidden = !step;
  el.livenessInstruction.dataset.step = step || '';
  el.callScreen.dataset.liveness = step ? 'running' : '';
  renderStageResults();
  if (!step) return;
  setText(el.livenessStepText, stepText(step));
  renderLivenessClock();
  if (identity.spokenStep !== `${live.completed.length}:${step}`) {
    identity.spokenStep = `${live.completed.length}:${step}`;
    speak(stepText(step));
  }
}

function renderLivenessClock() {
  const live = identity.liveness;
  if (!live || !live.current) return;
  const elapsedS = (Date.now() - live.stepStartedAt) / 1000;
  const left = Math.max(0, Math.ceil(live.limitS - elapsedS));
  const n = Math.min(live.steps.length, live.completed.length + 1);
  setText(el.livenessMeta, `${t('liveness.progress', { n, total: live.steps.length })} · ${t('liveness.seconds', { n: left })}`);
  setText(el.livenessCount, String(left));
  el.livenessCount.dataset.left = String(left);
  el.livenessBarFill.style.width = `${Math.max(0, Math.min(100, (1 - elapsedS / live.limitS) * 100))}%`;
}

function renderStageResults() {
  const liveness = identity.livenessResult;
  el.livenessResult.hidden = !liveness;
  if (liveness) {
    el.livenessResult.dataset.passed = String(liveness.passed);
    el.livenessResult.dataset.tone = liveness.passed ? 'ok' : 'error';
    setText(el.livenessResult, serverText(liveness.message, liveness.message_zh)
      || t(liveness.passed ? 'liveness.passed' : 'liveness.failed'));
  }
  const verification = identity.verification;
  // the liveness outcome has the stage to itself while it shows
  el.verificationResult.hidden = !verification || Boolean(liveness) || Boolean(identity.liveness);
  if (verification) {
    el.verificationResult.dataset.verified = String(verification.verified);
    el.verificationResult.dataset.reason = verification.reason;
    el.verificationResult.dataset.tone = verification.verified ? 'ok'
      : verification.reason === 'mismatch' ? 'error' : 'warn';
    setText(el.verificationResult, serverText(verification.message, verification.message_zh));
  }
}

/** A new session (or none): no consent, photo or check on screen any more. */
function resetIdentity() {
  identity.uploadSeq += 1;
  identity.consent = false;
  identity.photo = { state: '', code: null, message: '', status: 0 };
  setPreview(null);
  stopLiveness();
  clearTimeout(identity.livenessResultTimer);
  clearTimeout(identity.verificationTimer);
  identity.livenessResult = null;
  identity.verification = null;
  el.livenessResult.dataset.passed = '';
  el.verificationResult.dataset.verified = '';
  el.verificationResult.dataset.reason = '';
  renderIdentity();
}

// --- user actions --------------------------------------------------------------

function selectBusiness(business) {
  if (app.appointment && app.appointment.token && !app.appointment.used && business !== app.appointment.business) {
    return; // the appointment is for its own business
  }
  app.business = business;
  renderBusinessCards();
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
    businessButtons()[0]?.focus();
    return;
  }
  if (!devices.stream || app.joining) return;
  errors.clear();
  app.displayName = cleanDisplayName(el.displayName.value);
  resetIdentity();
  flow.reset();
  identity.consent = el.faceConsent.checked;
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

/** Hanging up asks first (a tap by mistake would end the business half done). */
function onHangupClick() {
  if (app.state !== 'active') return;
  el.hangupConfirm.hidden = false;
  el.hangupKeep.focus();
}

function closeHangupConfirm() {
  el.hangupConfirm.hidden = true;
}

function hangUp() {
  closeHangupConfirm();
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
  if (app.appointment && app.appointment.used) {
    app.appointment = null;
    renderAppointment();
  }
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
  buildBusinessCards(businessTypes());
  if (!config) return;
  if (Number.isFinite(config.rejoin_window_s) && config.rejoin_window_s > 0) {
    app.rejoinWindowS = config.rejoin_window_s;
  }
}

// --- appointments --------------------------------------------------------------

/** The page was opened from the link of an appointment the bank booked (`/?appointment=<token>`). */
async function loadAppointment(token) {
  let response;
  try {
    response = await fetch('/api/appointment', { headers: { 'X-Appointment-Token': token } });
  } catch {
    app.appointment = { invalid: true, unreachable: true };
    renderAppointment();
    return;
  }
  const body = await response.json().catch(() => ({}));
  await loadBusinessNames();
  if (!response.ok || !businessTypes().includes(body.business)) {
    app.appointment = { invalid: true };
    renderAppointment();
    return;
  }
  app.appointment = {
    token, business: body.business, displayName: String(body.display_name || ''), reference: Boolean(body.reference),
  };
  app.business = null;
  selectBusiness(body.business);
  el.displayName.value = app.appointment.displayName;
  renderAppointment();
}

function renderAppointment() {
  const a = app.appointment;
  const note = el.appointmentNote;
  note.hidden = !a;
  note.dataset.state = !a ? '' : a.invalid ? 'invalid' : a.used ? 'used' : 'booked';
  const booked = Boolean(a && a.token && !a.used);
  el.displayName.readOnly = booked;
  renderBusinessCards();
  if (!a) {
    setText(note, '');
  } else if (a.invalid) {
    setText(note, t(a.unreachable ? 'appointment.unreachable' : 'appointment.invalid'));
  } else {
    const parts = [t('appointment.booked', { business: businessName(a.business), name: a.displayName })];
    if (a.reference) parts.push(t('appointment.photo'));
    setText(note, parts.join(' '));
  }
}

// --- start ---------------------------------------------------------------------

function init() {
  applyLargeText(largeTextOn());
  el.largeText.addEventListener('click', onLargeTextToggle);
  bindLangToggle(el.langToggle);
  applyI18n();
  onLangChange(renderAll);
  el.join.addEventListener('click', onJoinClick);
  el.recordingConsent.addEventListener('change', renderJoinButton);
  el.faceConsentToggle.addEventListener('change', onFaceConsentToggle);
  el.idPhotoInput.addEventListener('change', onIdPhotoSelected);
  el.retryDevices.addEventListener('click', () => devices.start());
  el.cancel.addEventListener('click', onCancelClick);
  el.callbackForm.addEventListener('submit', onCallbackSubmit);
  el.hangup.addEventListener('click', onHangupClick);
  el.hangupConfirmButton.addEventListener('click', hangUp);
  el.hangupKeep.addEventListener('click', closeHangupConfirm);
  el.hangupConfirm.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') closeHangupConfirm();
  });
  el.startOver.addEventListener('click', onStartOver);
  el.displayName.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') onJoinClick();
  });

  setState('idle');
  document.body.dataset.screen = 'prepare';
  renderAll();
  loadConfig();
  devices.start();

  const saved = store.get(SESSION_KEY);
  if (saved && typeof saved.session_id === 'string' && typeof saved.rejoin_token === 'string') {
    // a reload during a session: take the place in the queue (or the call) back
    app.session = saved;
    // the server knows the session's business; the name shows once GET /api/config answered
    app.business = typeof saved.business === 'string' ? saved.business : null;
    app.displayName = typeof saved.display_name === 'string' ? saved.display_name : '';
    identity.consent = saved.face_consent === true;
    if (identity.consent && saved.id_photo === true) identity.photo.state = 'ok';
    renderIdentity();
    if (app.business) selectBusiness(app.business);
    app.resuming = true;
    renderJoinButton();
    notice.show(() => t('notice.resuming'));
    devices.ready.then(connect);
  } else {
    const token = new URLSearchParams(window.location.search).get('appointment');
    if (token) loadAppointment(token);
  }
}

init();
