// The auditor workbench (质检工作台): sign in, search past sessions, replay a
// session's dual recording (customer and agent side by side, in sync) with its
// event timeline, check the recording's integrity, record a pass/fail verdict
// (the QC items ticked, a fail's reason code), and see the session's identity
// evidence (ID photo, snapshots).
//
// Views (document.body.dataset.view): login, search, detail. The open session is
// in the URL hash (#session/<id>), so the browser's back button returns to the
// results and a reload reopens it. Server text only ever goes through
// textContent.

import {
  applyI18n, bindLangToggle, businessName, businessTypes, formatClock, has, loadBusinessNames, onLangChange, t,
} from './i18n.js';
import { Login } from './login.js';
import { ErrorArea, byId, byTestId, setText, showScreen } from './ui.js';

const TOKEN_KEY = 'vcounter.audit.token';
const PAGE_SIZE = 50;
/** The follower video is corrected when it drifts further than this from the leader. */
const MAX_DRIFT_S = 0.15;
/** After a correction, give the follower this long to settle before correcting again. */
const CORRECTION_COOLDOWN_MS = 800;
const HASH_PREFIX = '#session/';
/** timeline markers closer than this share a row only if there is no free row left */
const MARKER_GAP_PX = 14;
const MAX_LANES = 4;
const LANE_PX = 20;

const el = {
  user: byTestId('audit-user'),
  langToggle: byTestId('lang-toggle'),
  logout: byTestId('logout-button'),
  searchForm: byId('search-form'),
  searchButton: byTestId('search-button'),
  filterFrom: byTestId('filter-from'),
  filterTo: byTestId('filter-to'),
  filterAgent: byTestId('filter-agent'),
  filterBusiness: byTestId('filter-business'),
  filterOutcome: byTestId('filter-outcome'),
  filterAnomalies: byTestId('filter-anomalies'),
  filterQ: byTestId('filter-q'),
  filterVerdict: byTestId('filter-verdict'),
  filterAnomaly: byTestId('filter-anomaly'),
  sort: byTestId('sort'),
  prevSession: byTestId('prev-session'),
  nextSession: byTestId('next-session'),
  nextAnomaly: byTestId('next-anomaly'),
  identityCard: byId('identity-card'),
  identityAttempts: byTestId('identity-attempts'),
  resultsTotal: byTestId('results-total'),
  resultsTable: byTestId('results-table'),
  resultsBody: byId('results-body'),
  resultsEmpty: byId('results-empty'),
  pager: byId('pager'),
  pagePrev: byTestId('page-prev'),
  pageNext: byTestId('page-next'),
  pageInfo: byId('page-info'),
  back: byTestId('back-to-results'),
  detailTitle: byTestId('detail-title'),
  integrity: byTestId('integrity-badge'),
  legPicker: byId('leg-picker'),
  legSelect: byTestId('leg-select'),
  replayNotice: byTestId('replay-notice'),
  replay: byId('replay'),
  videoCustomer: byTestId('replay-customer'),
  videoAgent: byTestId('replay-agent'),
  statusCustomer: byId('status-customer'),
  statusAgent: byId('status-agent'),
  playPause: byTestId('play-pause'),
  seek: byTestId('seek'),
  time: byTestId('replay-time'),
  speed: byTestId('speed'),
  timeline: byTestId('timeline'),
  markers: byId('timeline-markers'),
  playhead: byId('timeline-playhead'),
  eventList: byTestId('event-list'),
  detailCustomer: byTestId('detail-customer'),
  detailAgent: byTestId('detail-agent'),
  detailBusiness: byTestId('detail-business'),
  detailSessionId: byTestId('detail-session-id'),
  detailCreated: byTestId('detail-created'),
  detailStarted: byTestId('detail-started'),
  detailEnded: byTestId('detail-ended'),
  detailDuration: byTestId('detail-duration'),
  detailOutcome: byTestId('detail-outcome'),
  detailEndReason: byTestId('detail-end-reason'),
  detailAnomalies: byTestId('detail-anomalies'),
  detailRecording: byTestId('detail-recording'),
  detailRetention: byTestId('detail-retention'),
  verdictSaved: byTestId('verdict-saved'),
  verdictForm: byId('verdict-form'),
  verdictPass: byTestId('verdict-pass'),
  verdictFail: byTestId('verdict-fail'),
  verdictNotes: byTestId('verdict-notes'),
  qcItems: [...document.querySelectorAll('[data-testid="qc-item"]')],
  verdictReason: byTestId('verdict-reason'),
  verdictReasonField: byId('verdict-reason-field'),
  verdictError: byId('verdict-error'),
  verdictSubmit: byTestId('verdict-submit'),
  verdictHistory: byTestId('verdict-history'),
  verdictHistoryEmpty: byId('verdict-history-empty'),
  sessionEvents: byTestId('session-events'),
  flowCard: byId('audit-flow-card'),
  flowFlag: byTestId('flow-flag'),
  flowMeta: byId('audit-flow-meta'),
  flowChecklist: byTestId('audit-checklist'),
};

const screens = { login: byId('screen-login'), search: byId('screen-search'), detail: byId('screen-detail') };
const errors = new ErrorArea(byId('error-area'), byTestId('error-message'), byId('error-close'));
const login = new Login({
  tokenKey: TOKEN_KEY,
  roles: ['auditor', 'admin'],
  wrongRoleKey: 'audit.notAuditor',
  onSignedIn: enterWorkbench,
  fetchMe: () => api('/api/me'),
});

const app = {
  view: 'login',
  user: null,
  /** the last search: filters, offset and answer */
  filters: {},
  offset: 0,
  total: 0,
  sessions: null,
  searchSeq: 0,
  /** the open session: GET /api/audit/sessions/{id} */
  sessionId: null,
  /** the session opened last, highlighted in the result list */
  lastOpened: null,
  detail: null,
  detailSeq: 0,
  recordingIndex: 0,
  /** integrity of the open recording: {state, reason, problems, checkedAt} */
  integrity: null,
  verifySeq: 0,
  detailFailed: false,
  verdictErrorKey: null,
  verdictPending: false,
  /** the session a click in the result list is opening (see route) */
  openingFromResults: null,
};

// --- API ------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** JSON from the API; throws ApiError (status 0 when the server cannot be reached). */
async function api(path, { method = 'GET', body } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: login.authHeaders(body === undefined ? {} : { 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch (err) {
    throw new ApiError(0, 'unreachable', err.message);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, data && data.error, data && data.message);
  }
  return data ?? {};
}

/** Show an API failure; a 401 means the login is gone: back to the sign-in form. */
function reportError(err, context) {
  if (!(err instanceof ApiError)) {
    console.error(context, err);
    errors.show(t('error.generic'), 15000);
    return;
  }
  console.warn(context, err.status, err.code, err.message);
  if (err.status === 401) {
    leaveWorkbench('agent.sessionExpired');
    return;
  }
  errors.show(apiErrorText(err), 15000);
}

function apiErrorText(err) {
  if (err.status === 0) return t('error.unreachable');
  if (err.status === 403) return t('audit.error.forbidden');
  if (err.status === 404) return t('audit.error.notFound');
  const detail = err.message && err.message !== err.code ? err.message : '';
  return t('audit.error.status', { status: err.status, message: detail || err.code || t('error.generic') });
}

// --- labels -----------------------------------------------------------------------

const LIFECYCLE = new Set([
  'queued', 'offered', 'call_started', 'media_negotiated', 'media_connected', 'media_closed',
  'recording_started', 'recording_stopped', 'ended',
]);
const WARNING = new Set([
  'customer_disconnected', 'customer_rejoined', 'requeued', 'media_disconnected', 'offer_timeout',
  'agent_disconnected', 'agent_rejoined', 'session_adopted', 'call_resumed', 'offer_declined', 'recording_recovered', 'step_refused', 'media_restored',
]);
const ANOMALY = new Set([
  'agent_lost', 'media_failed', 'media_stalled', 'failed', 'abandoned', 'session_failed', 'recording_failed',
  'no_recording', 'face_missing', 'multiple_faces', 'face_mismatch', 'flow_stopped', 'flow_incomplete',
  'consent_declined', 'identity_rejected', 'recording_mismatch',
]);
/** identity checks and business steps share one colour */
const STEP = /^(identity|id_|face_|liveness|ocr|document|consent|disclosure|sign|step|business|product|risk|flow|questionnaire|suitability|reference)/;

function category(kind) {
  if (ANOMALY.has(kind) || /_failed$|_mismatch$/.test(kind)) return 'anomaly';
  if (WARNING.has(kind)) return 'warning';
  if (LIFECYCLE.has(kind)) return 'lifecycle';
  if (STEP.test(kind)) return 'step';
  return 'other';
}

function label(prefix, value) {
  const key = `${prefix}.${value}`;
  return has(key) ? t(key) : String(value ?? '');
}

const kindLabel = (kind) => label('audit.kind', kind);
const anomalyLabel = (name) => label('audit.anomaly', name);
const outcomeLabel = (state) => label('audit.outcome', state);
const reasonLabel = (reason) => label('audit.reason', reason);
const recordingStateLabel = (state) => label('audit.rec', state || 'none');

function locale() {
  return document.documentElement.lang.startsWith('zh') ? 'zh-CN' : 'en-GB';
}

const dateFormats = new Map();

/** A server timestamp in the browser's time zone ("2026-11-23 18:00:05"). */
function formatDateTime(iso) {
  if (!iso) return '';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const loc = locale();
  if (!dateFormats.has(loc)) {
    dateFormats.set(loc, new Intl.DateTimeFormat(loc, {
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
      hour12: false,
    }));
  }
  return dateFormats.get(loc).format(date);
}

/** An offset on the recording as m:ss.s */
function formatOffset(ms) {
  const value = Math.max(0, Number(ms) || 0);
  return `${formatClock(value / 1000)}.${Math.floor((value % 1000) / 100)}`;
}

function formatDuration(seconds) {
  return seconds == null || Number.isNaN(Number(seconds)) ? '' : formatClock(seconds);
}

function agentText(agent) {
  if (!agent) return t('audit.noAgent');
  if (agent.display_name && agent.username && agent.display_name !== agent.username) {
    return `${agent.display_name} (${agent.username})`;
  }
  return agent.display_name || agent.username || '';
}

/** A flow step's own title in the current language (from the flow file), else its id. */
function stepTitle(stepId) {
  const flow = app.detail ? app.detail.flow : null;
  const step = flow && Array.isArray(flow.steps) ? flow.steps.find((s) => s.id === stepId) : null;
  if (step && step.title && typeof step.title === 'object') {
    const text = document.documentElement.lang.startsWith('zh') ? step.title.zh : step.title.en;
    if (text) return text;
  }
  return String(stepId ?? '');
}

/** Who did something: the customer, the agent, or a user's name. */
function actorLabel(by) {
  if (by === 'customer' || by === 'agent') return t(`audit.actor.${by}`);
  return String(by ?? '');
}

/** Why a face check could not decide or failed ("too_dark" -> "the picture is too dark"). */
function identityReason(reason) {
  if (has(`audit.identityReason.${reason}`)) return t(`audit.identityReason.${reason}`);
  return reasonLabel(reason);
}

const formatDistance = (value) => (Number.isFinite(Number(value)) ? Number(value).toFixed(2) : '');

/**
 * One event as a sentence ("Step “Account type and limits” completed by the agent"): the
 * template audit.say.<kind> (or .<kind>.true/.false for a yes/no outcome) filled from its data,
 * else the kind's name with its reason.
 */
function eventSentence(event) {
  const data = event.data && typeof event.data === 'object' ? event.data : {};
  const outcome = typeof data.verified === 'boolean' ? data.verified : data.suitable;
  const base = `audit.say.${event.kind}`;
  const keys = [
    typeof outcome === 'boolean' ? `${base}.${outcome}` : null,
    data.notes ? `${base}.notes` : null,
    data.step != null && data.reason ? `${base}.stepReason` : null,
    data.reason ? `${base}.reason` : null,
    data.step != null ? `${base}.step` : null,
    base,
  ];
  const key = keys.find((k) => k && has(k));
  const params = {
    step: data.step != null ? stepTitle(data.step) : '',
    by: actorLabel(data.by),
    reason: event.kind.startsWith('identity_') || event.kind.startsWith('liveness_')
      ? identityReason(data.reason) : reasonLabel(data.reason),
    distance: formatDistance(data.distance),
    threshold: formatDistance(data.threshold),
    level: data.level ?? data.customer_level ?? '',
    score: data.score ?? '',
    document: data.document ?? '',
    disposition: has(`wrapUp.disposition.${data.disposition}`)
      ? t(`wrapUp.disposition.${data.disposition}`) : String(data.disposition ?? ''),
    notes: typeof data.notes === 'string' ? data.notes : '',
  };
  if (key) return t(key, params);
  const name = kindLabel(event.kind);
  return data.reason ? t('audit.say.withReason', { event: name, reason: params.reason }) : name;
}

function node(tag, { className, text, testid, dataset, title } = {}) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (testid) e.dataset.testid = testid;
  if (dataset) for (const [k, v] of Object.entries(dataset)) e.dataset[k] = String(v);
  if (title) e.title = title;
  return e;
}

function badge(text, tone, extra = {}) {
  return node('span', { className: `badge badge-${tone}`, text, ...extra });
}

/** One badge per anomaly; one a manual verification resolved is marked so (and says by whom). */
function anomalyBadges(list, resolved = {}) {
  const settled = resolved && typeof resolved === 'object' ? resolved : {};
  return (Array.isArray(list) ? list : []).map((name) => {
    const li = node('li');
    const how = settled[name];
    const tone = how ? 'ok' : category(name) === 'warning' ? 'warn' : 'danger';
    const text = how ? t('audit.anomalyResolvedShort', { anomaly: anomalyLabel(name) }) : anomalyLabel(name);
    li.append(badge(text, tone, {
      testid: 'anomaly-badge',
      dataset: { anomaly: name, resolved: how ? 'true' : 'false' },
      title: how ? t('audit.anomalyResolved', { by: how.by || '', reason: how.reason || '', at: formatDateTime(how.at) }) : undefined,
    }));
    return li;
  });
}

function outcomeTone(state) {
  if (state === 'ended') return 'ok';
  if (state === 'abandoned') return 'warn';
  if (state === 'failed') return 'danger';
  return 'info';
}

function recordingTone(state) {
  if (state === 'finalized') return 'ok';
  if (state === 'recovered' || state === 'recording') return 'warn';
  return 'danger';
}

function verdictBadge(verdict) {
  if (!verdict || !verdict.result) return node('span', { className: 'muted', text: t('audit.noVerdict') });
  return badge(label('audit.verdict', verdict.result), verdict.result === 'pass' ? 'ok' : 'danger',
    { dataset: { result: verdict.result } });
}

// --- views ------------------------------------------------------------------------

function showView(view) {
  app.view = view;
  document.body.dataset.view = view;
  showScreen(screens, view);
  if (view !== 'detail') {
    replay.unload();
    clearEvidence();
  }
}

function route() {
  if (!app.user) return;
  const hash = window.location.hash;
  if (hash.startsWith(HASH_PREFIX)) {
    let id = '';
    try {
      id = decodeURIComponent(hash.slice(HASH_PREFIX.length));
    } catch {
      id = '';
    }
    if (id) {
      // remember on this history entry that "back" leads to the result list
      if (app.openingFromResults === id) history.replaceState({ fromResults: true }, '');
      app.openingFromResults = null;
      if (id !== app.sessionId || app.view !== 'detail') openSession(id);
      return;
    }
  }
  app.sessionId = null;
  app.detail = null;
  app.detailSeq += 1;
  app.verifySeq += 1;
  showView('search');
  renderResults();
}

function openRow(id) {
  app.openingFromResults = id;
  const target = HASH_PREFIX + encodeURIComponent(id);
  if (window.location.hash === target) route();
  else window.location.hash = target;
}

/** "Back to results": the browser's back when this entry was opened from the list, else a new entry. */
function backToResults() {
  if (history.state && history.state.fromResults) {
    history.back();
    return;
  }
  history.pushState(null, '', `${window.location.pathname}${window.location.search}`);
  route();
}

// --- login ------------------------------------------------------------------------

function enterWorkbench(user) {
  app.user = user;
  login.setError(null);
  renderUser();
  el.logout.hidden = false;
  el.user.hidden = false;
  app.filters = readFilters(); // the work queue: sessions not yet reviewed
  search(0);
  route();
}

function renderUser() {
  const user = app.user;
  if (!user) return;
  setText(el.user, `${user.display_name || user.username} · ${label('audit.role', user.role)}`);
}

async function logout() {
  const revoked = login.revoke();
  leaveWorkbench(null);
  await revoked;
}

/** Back to the sign-in form, with an optional message there. */
function leaveWorkbench(loginErrorKey) {
  app.user = null;
  if (loginErrorKey) login.forget();
  app.sessions = null;
  app.detail = null;
  app.sessionId = null;
  app.searchSeq += 1;
  app.detailSeq += 1;
  app.verifySeq += 1;
  el.resultsBody.replaceChildren();
  el.logout.hidden = true;
  el.user.hidden = true;
  login.setError(loginErrorKey);
  showView('login');
}

// --- search -----------------------------------------------------------------------

function readFilters() {
  const filters = {};
  const text = (input) => input.value.trim();
  if (text(el.filterFrom)) filters.from = text(el.filterFrom);
  if (text(el.filterTo)) filters.to = text(el.filterTo);
  if (text(el.filterAgent)) filters.agent = text(el.filterAgent);
  if (el.filterBusiness.value) filters.business = el.filterBusiness.value;
  if (el.filterOutcome.value) filters.outcome = el.filterOutcome.value;
  if (el.filterAnomalies.checked) filters.anomalies = '1';
  if (text(el.filterQ)) filters.q = text(el.filterQ);
  if (el.filterVerdict.value) filters.verdict = el.filterVerdict.value;
  if (el.filterAnomaly.value) filters.anomaly = el.filterAnomaly.value;
  if (el.sort.value && el.sort.value !== 'newest') filters.sort = el.sort.value;
  return filters;
}

/**
 * The search's query: the date fields are the viewer's own days, sent as the instants their
 * local midnights are (`since` inclusive, `before` exclusive: the day after `to`).
 */
function searchParams(filters) {
  const { from, to, ...rest } = filters;
  const params = { ...rest };
  const midnight = (value, plusDays) => {
    const [y, m, d] = value.split('-').map(Number);
    const date = new Date(y, m - 1, d + plusDays);
    return Number.isNaN(date.getTime()) ? null : date.toISOString();
  };
  if (from && midnight(from, 0)) params.since = midnight(from, 0);
  if (to && midnight(to, 1)) params.before = midnight(to, 1);
  return params;
}

/** Every anomaly kind the server names, for the anomaly filter. */
const ANOMALY_KINDS = [
  'identity_rejected', 'liveness_failed', 'face_mismatch', 'face_missing', 'multiple_faces',
  'customer_disconnected', 'agent_disconnected', 'agent_lost', 'node_lost', 'media_failed',
  'recording_alert', 'recording_failed', 'recording_recovered', 'recording_mismatch', 'no_recording',
  'session_failed', 'flow_stopped', 'flow_incomplete', 'step_refused',
];

function renderAnomalyFilter() {
  const chosen = el.filterAnomaly.value;
  const all = el.filterAnomaly.querySelector('option[value=""]');
  el.filterAnomaly.replaceChildren(all, ...ANOMALY_KINDS.map((kind) => {
    const option = document.createElement('option');
    option.value = kind;
    option.textContent = anomalyLabel(kind);
    return option;
  }));
  el.filterAnomaly.value = chosen;
}

async function search(offset) {
  const seq = ++app.searchSeq;
  const params = new URLSearchParams({ ...searchParams(app.filters), limit: String(PAGE_SIZE), offset: String(offset) });
  el.resultsTable.setAttribute('aria-busy', 'true');
  el.searchButton.disabled = true;
  try {
    const data = await api(`/api/audit/sessions?${params}`);
    if (seq !== app.searchSeq) return;
    app.offset = offset;
    app.sessions = Array.isArray(data.sessions) ? data.sessions : [];
    app.total = Number(data.total) || app.sessions.length;
    renderResults();
  } catch (err) {
    if (seq === app.searchSeq) reportError(err, 'search failed');
  } finally {
    if (seq === app.searchSeq) {
      el.resultsTable.removeAttribute('aria-busy');
      el.searchButton.disabled = false;
    }
  }
}

const COLUMNS = ['colTime', 'colCustomer', 'colAgent', 'colBusiness', 'colDuration', 'colOutcome', 'colRecording',
  'colAnomalies', 'colVerdict'];

function renderResults() {
  const sessions = app.sessions;
  if (!sessions) {
    el.resultsBody.replaceChildren();
    setText(el.resultsTotal, '');
    el.resultsEmpty.hidden = true;
    el.pager.hidden = true;
    return;
  }
  el.resultsBody.replaceChildren(...sessions.map(resultRow));
  renderSessionNav();
  el.resultsEmpty.hidden = sessions.length > 0;
  setText(el.resultsEmpty, t('audit.noResults'));
  setText(el.resultsTotal, t('audit.total', { n: app.total }));
  const pages = Math.max(1, Math.ceil(app.total / PAGE_SIZE));
  el.pager.hidden = pages <= 1 && app.offset === 0;
  el.pagePrev.disabled = app.offset <= 0;
  el.pageNext.disabled = app.offset + sessions.length >= app.total;
  setText(el.pageInfo, t('audit.page', { page: Math.floor(app.offset / PAGE_SIZE) + 1, pages }));
}

function resultRow(session) {
  const tr = node('tr', { className: 'session-row', testid: 'session-row', dataset: { sessionId: session.id } });
  tr.tabIndex = 0;
  if (session.id === app.lastOpened) tr.classList.add('selected');
  const cells = [];
  const cell = (content) => {
    const td = node('td');
    td.dataset.label = t(`audit.${COLUMNS[cells.length]}`);
    if (content instanceof Node) td.append(content);
    else if (Array.isArray(content)) td.append(...content);
    else td.textContent = content == null ? '' : String(content);
    cells.push(td);
    return td;
  };
  cell(formatDateTime(session.created_at)).classList.add('nowrap');
  cell(node('strong', { text: session.customer_name || '' }));
  cell(agentText(session.agent));
  cell(businessName(session.business));
  cell(formatDuration(session.duration_s)).classList.add('mono');
  const outcome = [badge(outcomeLabel(session.state), outcomeTone(session.state))];
  if (session.end_reason) outcome.push(node('span', { className: 'cell-sub muted', text: reasonLabel(session.end_reason) }));
  cell(outcome);
  const rec = session.recording;
  cell(badge(recordingStateLabel(rec && rec.state), rec ? recordingTone(rec.state) : 'muted'));
  const anomalies = node('ul', { className: 'badges' });
  anomalies.append(...anomalyBadges(session.anomalies, session.resolved));
  cell(anomalies);
  cell(verdictBadge(session.verdict));
  tr.append(...cells);
  return tr;
}

function onResultsActivate(event) {
  const row = event.target.closest('tr[data-session-id]');
  if (!row) return;
  if (event.type === 'keydown' && event.key !== 'Enter' && event.key !== ' ') return;
  event.preventDefault();
  openRow(row.dataset.sessionId);
}

// --- one session ------------------------------------------------------------------

async function openSession(id) {
  const seq = ++app.detailSeq;
  app.verifySeq += 1;
  app.sessionId = id;
  app.lastOpened = id;
  app.detail = null;
  app.detailFailed = false;
  app.recordingIndex = 0;
  app.integrity = null;
  app.verdictErrorKey = null;
  el.verdictForm.reset();
  replay.unload();
  showView('detail');
  renderDetail();
  loadEvidence(id);
  try {
    const data = await api(`/api/audit/sessions/${encodeURIComponent(id)}`);
    if (seq !== app.detailSeq) return;
    app.detail = {
      session: data.session || {},
      recordings: Array.isArray(data.recordings) ? data.recordings : [],
      events: Array.isArray(data.events) ? data.events : [],
      verdicts: Array.isArray(data.verdicts) ? data.verdicts : [],
      flow: data.flow && typeof data.flow === 'object' ? data.flow : null,
    };
    renderDetail();
    selectRecording(0);
  } catch (err) {
    if (seq !== app.detailSeq) return;
    app.detailFailed = true;
    renderDetail();
    reportError(err, 'session failed to load');
  }
}

function currentRecording() {
  const recordings = app.detail ? app.detail.recordings : [];
  return recordings[app.recordingIndex] || null;
}

function renderDetail() {
  const detail = app.detail;
  const s = detail ? detail.session : {};
  let title = t('audit.loading');
  if (detail) title = `${s.customer_name || t('agent.customer')} · ${businessName(s.business)}`;
  else if (app.detailFailed) title = t('audit.sessionUnavailable');
  setText(el.detailTitle, title);
  setText(el.detailCustomer, s.customer_name);
  setText(el.detailAgent, detail ? agentText(s.agent) : '');
  setText(el.detailBusiness, s.business ? businessName(s.business) : '');
  setText(el.detailSessionId, s.id || app.sessionId || '');
  setText(el.detailCreated, formatDateTime(s.created_at));
  setText(el.detailStarted, formatDateTime(s.started_at));
  setText(el.detailEnded, formatDateTime(s.ended_at));
  setText(el.detailDuration, formatDuration(s.duration_s));
  setText(el.detailOutcome, s.state ? outcomeLabel(s.state) : '');
  setText(el.detailEndReason, s.end_reason ? reasonLabel(s.end_reason) : '');
  renderAnomalies();
  renderFlow();
  renderIdentity();
  renderSessionNav();
  renderLegs();
  renderRecordingDetails();
  renderTimeline();
  renderIntegrity();
  renderVerdicts();
  renderSessionEvents();
  renderEvidence();
  renderReplayNotice();
  if (!detail) el.replay.hidden = true;
}

function renderLegs() {
  const recordings = app.detail ? app.detail.recordings : [];
  el.legPicker.hidden = recordings.length < 2;
  el.legSelect.replaceChildren(...recordings.map((rec, index) => {
    const option = node('option', {
      text: t('audit.legOption', {
        leg: rec.leg ?? index + 1,
        duration: formatDuration((rec.duration_ms || 0) / 1000),
        state: recordingStateLabel(rec.state),
      }),
    });
    option.value = String(index);
    return option;
  }));
  el.legSelect.value = String(app.recordingIndex);
}

function renderRecordingDetails() {
  const rec = currentRecording();
  if (!rec) {
    setText(el.detailRecording, app.detail ? t('audit.noRecording') : '');
    setText(el.detailRetention, '');
    return;
  }
  const parts = [recordingStateLabel(rec.state)];
  if (rec.duration_ms != null) parts.push(formatDuration(rec.duration_ms / 1000));
  parts.push(rec.id);
  setText(el.detailRecording, parts.join(' · '));
  const retention = [formatDateTime(rec.retention_until)];
  if (rec.legal_hold) retention.push(t('audit.legalHold'));
  setText(el.detailRetention, retention.filter(Boolean).join(' · '));
}

function showReplayNotice(text, tone = 'info') {
  el.replayNotice.dataset.tone = tone;
  setText(el.replayNotice, text);
  el.replayNotice.hidden = !text;
}

function playable(rec) {
  return Boolean(rec && Array.isArray(rec.outputs) && rec.outputs.some((o) => o && o.url));
}

function selectRecording(index) {
  app.recordingIndex = index;
  app.verifySeq += 1;
  app.integrity = null;
  el.legSelect.value = String(index);
  const rec = currentRecording();
  renderRecordingDetails();
  el.replay.hidden = !playable(rec);
  if (playable(rec)) replay.load(rec);
  else replay.unload();
  renderReplayNotice();
  renderTimeline();
  renderIntegrity();
  // a recording still being made has no manifest to verify yet
  if (rec && rec.state !== 'recording') verify(rec);
}

/** The line above the player: why there is nothing to play, or what is wrong with it. */
function renderReplayNotice() {
  const rec = currentRecording();
  if (app.detailFailed) showReplayNotice(t('audit.sessionUnavailable'), 'error');
  else if (!app.detail) showReplayNotice('');
  else if (!rec) showReplayNotice(t('audit.noRecordingNotice'), 'warn');
  else if (!playable(rec)) showReplayNotice(t(rec.state === 'recording' ? 'audit.stillRecording' : 'audit.noOutputs'), 'warn');
  else if (rec.problem) showReplayNotice(t('audit.problemNotice', { problem: rec.problem }), 'warn');
  else if (rec.state === 'recovered') showReplayNotice(t('audit.recoveredNotice'), 'warn');
  else showReplayNotice('');
}

// --- integrity ----------------------------------------------------------------------

async function verify(rec) {
  const seq = ++app.verifySeq;
  app.integrity = { state: 'checking' };
  renderIntegrity();
  try {
    const result = await api(`/api/audit/recordings/${encodeURIComponent(rec.id)}/verify`);
    if (seq !== app.verifySeq) return;
    app.integrity = {
      state: result.ok === true ? 'verified' : 'failed',
      reason: result.reason || '',
      problems: Array.isArray(result.problems) ? result.problems : [],
      checkedAt: result.checked_at,
    };
  } catch (err) {
    if (seq !== app.verifySeq) return;
    if (err instanceof ApiError && err.status === 401) {
      reportError(err, 'verify failed');
      return;
    }
    app.integrity = { state: 'failed', reason: err instanceof ApiError ? apiErrorText(err) : t('error.generic'),
      problems: [] };
  }
  renderIntegrity();
}

function renderIntegrity() {
  const info = app.integrity;
  el.integrity.hidden = !info;
  el.integrity.dataset.state = info ? info.state : '';
  if (!info) {
    setText(el.integrity, '');
    el.integrity.removeAttribute('title');
    return;
  }
  if (info.state === 'checking') setText(el.integrity, t('audit.integrity.checking'));
  else if (info.state === 'verified') setText(el.integrity, t('audit.integrity.verified'));
  else setText(el.integrity, t('audit.integrity.failed', { reason: info.reason || t('error.generic') }));
  const lines = [];
  if (info.checkedAt) lines.push(t('audit.integrity.checkedAt', { at: formatDateTime(info.checkedAt) }));
  for (const problem of info.problems || []) lines.push(String(problem));
  if (lines.length) el.integrity.title = lines.join('\n');
  else el.integrity.removeAttribute('title');
}

// --- business flow checklist ---------------------------------------------------------

const FLOW_STEP_TONE = { done: 'ok', failed: 'danger', active: 'warn', pending: 'info' };

/** The flow's steps with their times; a flow that stopped or never finished is flagged. */
function renderFlow() {
  const flow = app.detail ? app.detail.flow : null;
  el.flowCard.hidden = !flow;
  if (!flow) {
    el.flowChecklist.replaceChildren();
    el.flowFlag.hidden = true;
    el.flowFlag.dataset.status = '';
    return;
  }
  const flagged = flow.status === 'stopped' || flow.status === 'incomplete';
  el.flowFlag.hidden = !flagged;
  el.flowFlag.dataset.status = flagged ? flow.status : '';
  setText(el.flowFlag, flagged ? t(`audit.flowFlag.${flow.status}`) : '');
  el.flowMeta.dataset.status = flow.status || '';
  const meta = [businessName(flow.business), flow.version != null ? `v${flow.version}` : '',
    label('flow.status', flow.status)];
  if (flow.reason) meta.push(has(`flow.reason.${flow.reason}`) ? t(`flow.reason.${flow.reason}`) : reasonLabel(flow.reason));
  setText(el.flowMeta, meta.filter(Boolean).join(' · '));
  const steps = Array.isArray(flow.steps) ? flow.steps : [];
  el.flowChecklist.replaceChildren(...steps.map((step, i) => {
    const li = node('li', {
      className: 'flow-step',
      testid: 'audit-step',
      dataset: { step: step.id, status: step.status, kind: step.kind || '' },
    });
    const mark = step.status === 'done' ? '✓' : step.status === 'failed' ? '✕' : String(i + 1);
    // the step's own title (an account-type notice and a risk disclosure are both of kind
    // "disclosure": the kind's name says nothing of which one it was)
    li.append(
      node('span', { className: 'flow-step-mark', text: mark }),
      node('span', { className: 'flow-step-name', testid: 'audit-step-title', text: stepTitle(step.id) }),
      badge(label('flow.stepStatus', step.status), FLOW_STEP_TONE[step.status] || 'info'),
    );
    const times = [];
    if (step.started_at) times.push(formatDateTime(step.started_at));
    if (step.ended_at) times.push(formatDateTime(step.ended_at));
    const time = node('span', { className: 'flow-step-time mono', testid: 'audit-step-time' });
    const at = stepInRecording(step.id);
    if (at.started != null) {
      // a link into the recording shown: where the step started on its own timeline (the
      // session's offsets count from the queue join, the recording's from its start)
      const seek = node('button', {
        className: 'link-button',
        text: [formatOffset(at.started), at.ended != null ? formatOffset(at.ended) : '']
          .filter(Boolean).join(' – '),
        dataset: { offsetMs: at.started },
        title: times.join(' – '),
      });
      seek.type = 'button';
      seek.addEventListener('click', () => replay.seekTo(at.started / 1000));
      time.append(seek);
    } else {
      time.textContent = times.join(' – ');
    }
    time.dataset.started = step.started_at || '';
    time.dataset.ended = step.ended_at || '';
    li.append(time);
    return li;
  }));
}

/** Where a flow step started and ended on the shown recording's timeline (ms), if it is there. */
function stepInRecording(stepId) {
  const found = { started: null, ended: null };
  for (const e of timelineEvents()) {
    if (!e.data || e.data.step !== stepId) continue;
    if (e.kind === 'step_started' && found.started == null) found.started = e.offset_ms;
    else if ((e.kind === 'step_completed' || e.kind === 'flow_stopped') && found.ended == null) {
      found.ended = e.offset_ms;
    }
  }
  return found;
}

// --- timeline -------------------------------------------------------------------------

function timelineEvents() {
  const rec = currentRecording();
  const events = rec && Array.isArray(rec.timeline) ? rec.timeline : [];
  return events
    .filter((e) => e && typeof e.kind === 'string')
    .map((e) => ({ ...e, offset_ms: Math.max(0, Number(e.offset_ms) || 0) }))
    .sort((a, b) => a.offset_ms - b.offset_ms);
}

function renderTimeline() {
  const events = timelineEvents();
  el.markers.replaceChildren(...events.map((event) => {
    const kind = category(event.kind);
    const title = `${eventSentence(event)} · ${formatOffset(event.offset_ms)}`;
    const marker = node('button', {
      className: 'tl-marker',
      testid: 'timeline-marker',
      title,
      dataset: { kind: event.kind, offsetMs: event.offset_ms, category: kind },
    });
    marker.type = 'button';
    marker.setAttribute('aria-label', title);
    return marker;
  }));
  layoutMarkers();
  el.eventList.replaceChildren(...events.map((event) => {
    const li = node('li');
    const button = node('button', {
      className: 'event-item',
      testid: 'event-item',
      dataset: { kind: event.kind, offsetMs: event.offset_ms, category: category(event.kind) },
    });
    button.type = 'button';
    button.append(
      node('span', { className: 'event-time mono', text: formatOffset(event.offset_ms) }),
      node('span', { className: 'event-dot', dataset: { category: category(event.kind) } }),
      node('span', { className: 'event-kind', testid: 'event-sentence', text: eventSentence(event) }),
    );
    li.append(button);
    return li;
  }));
  if (!events.length && currentRecording()) {
    el.eventList.append(node('li', { className: 'muted small', text: t('audit.noEvents') }));
  }
  lastCurrentEvent = -2;
  renderNextAnomaly();
  renderPosition();
}

let lastCurrentEvent = -2;

/** Move the playhead and mark the latest event already passed. */
function renderPosition() {
  const duration = replay.duration;
  const position = replay.position;
  setText(el.time, `${formatClock(position)} / ${formatClock(duration)}`);
  el.seek.max = String(duration || 0);
  if (!replay.dragging) el.seek.value = String(position);
  el.playhead.style.left = `${Math.min(100, (position * 1000 / timelineSpanMs()) * 100)}%`;
  const markers = el.markers.children;
  let current = -1;
  for (let i = 0; i < markers.length; i += 1) {
    if (Number(markers[i].dataset.offsetMs) <= position * 1000 + 50) current = i;
  }
  if (current !== lastCurrentEvent) {
    lastCurrentEvent = current;
    const items = el.eventList.querySelectorAll('.event-item');
    items.forEach((item, i) => item.classList.toggle('current', i === current));
    Array.from(markers).forEach((marker, i) => marker.classList.toggle('current', i === current));
    if (replay.playing && items[current]) keepInView(el.eventList, items[current].parentElement);
  }
  el.playPause.setAttribute('aria-pressed', String(replay.playing));
  el.playPause.setAttribute('aria-label', t(replay.playing ? 'audit.pause' : 'audit.play'));
  el.playPause.dataset.state = replay.playing ? 'playing' : 'paused';
}

/** Scroll a list (not the page) so that `item` shows. */
function keepInView(list, item) {
  const top = item.offsetTop;
  if (top < list.scrollTop || top + item.offsetHeight > list.scrollTop + list.clientHeight) {
    list.scrollTop = Math.max(0, top - list.clientHeight / 3);
  }
}

/** Milliseconds the timeline bar spans: the recording, or its last event if later. */
function timelineSpanMs() {
  let span = replay.duration * 1000;
  for (const marker of el.markers.children) span = Math.max(span, Number(marker.dataset.offsetMs) || 0);
  return Math.max(span, 1);
}

/**
 * Place the markers along the bar. Events close in time (a reconnect and its
 * renegotiation, both parties' media) would cover each other, so markers are
 * packed into up to MAX_LANES rows: each one stays visible and clickable.
 */
function layoutMarkers() {
  const width = el.markers.clientWidth;
  const markers = Array.from(el.markers.children);
  const durationMs = timelineSpanMs();
  const laneEnds = [];
  const lanes = markers.map((marker) => {
    const fraction = Math.min(1, (Number(marker.dataset.offsetMs) || 0) / durationMs);
    marker.style.left = `${fraction * 100}%`;
    const x = fraction * width;
    let lane = laneEnds.findIndex((end) => x - end >= MARKER_GAP_PX);
    if (lane === -1) {
      lane = laneEnds.length < MAX_LANES ? laneEnds.length : laneEnds.indexOf(Math.min(...laneEnds));
    }
    laneEnds[lane] = x;
    return lane;
  });
  const count = Math.max(1, laneEnds.length);
  markers.forEach((marker, i) => {
    marker.style.top = `${(lanes[i] / count) * 100}%`;
    marker.style.height = `${100 / count}%`;
  });
  el.timeline.style.height = `${Math.max(36, count * LANE_PX)}px`;
  el.timeline.dataset.lanes = String(count);
  laidOutWidth = width;
}

let laidOutWidth = 0;

function onTimelineClick(event) {
  const marker = event.target.closest('[data-offset-ms]');
  if (marker) {
    replay.seekTo(Number(marker.dataset.offsetMs) / 1000);
    return;
  }
  if (!replay.loaded) return;
  const rect = el.timeline.getBoundingClientRect();
  if (rect.width <= 0) return;
  const fraction = Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
  replay.seekTo((fraction * timelineSpanMs()) / 1000);
}

function onEventListClick(event) {
  const item = event.target.closest('[data-offset-ms]');
  if (item) replay.seekTo(Number(item.dataset.offsetMs) / 1000);
}

function renderSessionEvents() {
  const events = app.detail ? app.detail.events : [];
  el.sessionEvents.replaceChildren(...events.map((event) => {
    const li = node('li', { className: 'event-item', dataset: { kind: event.kind, category: category(event.kind) } });
    li.append(
      node('span', { className: 'event-time mono', text: formatOffset(event.offset_ms), title: formatDateTime(event.at) }),
      node('span', { className: 'event-dot', dataset: { category: category(event.kind) } }),
      node('span', { className: 'event-kind', testid: 'event-sentence', text: eventSentence(event) }),
    );
    return li;
  }));
  if (app.detail && !events.length) el.sessionEvents.append(node('li', { className: 'muted small', text: t('audit.noEvents') }));
}

// --- anomalies and identity outcomes -----------------------------------------------------

/** The session's latest event of `kind` (from the whole session's log). */
function lastEvent(kind) {
  const events = app.detail ? app.detail.events : [];
  for (let i = events.length - 1; i >= 0; i -= 1) if (events[i].kind === kind) return events[i];
  return null;
}

/** The snapshot ids and distances a face comparison kept (`snapshots`/`distances`, or the one). */
function comparedFrames(data) {
  const d = data && typeof data === 'object' ? data : {};
  const snapshots = Array.isArray(d.snapshots) ? d.snapshots : d.snapshot ? [d.snapshot] : [];
  const distances = Array.isArray(d.distances) ? d.distances : d.distance != null ? [d.distance] : [];
  return { snapshots: snapshots.filter((id) => typeof id === 'string'), distances, threshold: d.threshold };
}

/** Thumbnails of evidence snapshots by id (once their images have loaded). */
function snapshotThumbs(ids, testid) {
  const list = node('span', { className: 'snapshot-thumbs' });
  for (const id of ids) {
    const url = evidence.images.get(id);
    if (!url || url === 'failed') continue;
    const img = node('img', { className: 'snapshot-thumb', testid, dataset: { item: id } });
    img.src = url;
    img.alt = t('audit.evidence.snapshot');
    list.append(img);
  }
  return list;
}

/** The anomalies, each resolved one with who settled it and why, a mismatch with its evidence. */
function renderAnomalies() {
  const detail = app.detail;
  const s = detail ? detail.session : {};
  const resolved = s.resolved && typeof s.resolved === 'object' ? s.resolved : {};
  const items = anomalyBadges(s.anomalies, resolved);
  items.forEach((li, i) => {
    const name = s.anomalies[i];
    const how = resolved[name];
    if (how) {
      li.append(node('span', {
        className: 'anomaly-resolved small',
        testid: 'anomaly-resolved',
        dataset: { anomaly: name },
        text: t('audit.anomalyResolved', { by: how.by || '', reason: how.reason || '', at: formatDateTime(how.at) }),
      }));
    }
    const source = name === 'identity_rejected' || name === 'face_mismatch' ? lastEvent(name) : null;
    if (source) {
      const frames = comparedFrames(source.data);
      if (frames.distances.length) {
        li.append(node('span', {
          className: 'anomaly-distances small mono',
          testid: 'anomaly-distances',
          text: t('audit.distances', {
            distances: frames.distances.map(formatDistance).join(', '),
            threshold: formatDistance(frames.threshold),
          }),
        }));
      }
      li.append(snapshotThumbs(frames.snapshots, 'anomaly-snapshot'));
    }
  });
  el.detailAnomalies.replaceChildren(...items);
  if (detail && !(s.anomalies && s.anomalies.length)) {
    el.detailAnomalies.append(node('li', { className: 'muted', testid: 'no-anomalies', text: t('audit.noAnomalies') }));
  }
}

const IDENTITY_OUTCOMES = {
  identity_verified: 'verified',
  identity_rejected: 'rejected',
  identity_inconclusive: 'inconclusive',
  identity_unusable: 'inconclusive',
  identity_manual: 'manual',
  liveness_passed: 'verified',
  liveness_failed: 'rejected',
};
const OUTCOME_TONE = { verified: 'ok', rejected: 'danger', inconclusive: 'warn', manual: 'info' };

/** Every face check of the session in order: what it concluded, and why. */
function renderIdentity() {
  const events = (app.detail ? app.detail.events : []).filter((e) => e && IDENTITY_OUTCOMES[e.kind]);
  el.identityCard.hidden = events.length === 0;
  el.identityAttempts.replaceChildren(...events.map((event) => {
    let outcome = IDENTITY_OUTCOMES[event.kind];
    const data = event.data && typeof event.data === 'object' ? event.data : {};
    if (outcome === 'manual') outcome = data.verified === true ? 'verified' : 'rejected';
    const li = node('li', {
      className: 'identity-attempt',
      testid: 'identity-attempt',
      dataset: { kind: event.kind, outcome },
    });
    const head = node('div', { className: 'identity-attempt-head' });
    head.append(
      badge(t(`audit.identityOutcome.${outcome}`), OUTCOME_TONE[outcome] || 'info'),
      node('span', { className: 'small muted', text: formatDateTime(event.at) }),
    );
    li.append(head, node('p', { className: 'identity-attempt-text', text: eventSentence(event) }));
    if (event.kind === 'identity_rejected') {
      const frames = comparedFrames(data);
      if (frames.distances.length) {
        li.append(node('span', {
          className: 'small mono',
          text: t('audit.distances', {
            distances: frames.distances.map(formatDistance).join(', '),
            threshold: formatDistance(frames.threshold),
          }),
        }));
      }
      li.append(snapshotThumbs(frames.snapshots, 'attempt-snapshot'));
    }
    return li;
  }));
}

// --- work queue: the next session, the next anomaly, keys -------------------------------

/** The open session's neighbours in the result list (null at either end, or off the list). */
function neighbours() {
  const list = app.sessions || [];
  const i = list.findIndex((x) => x.id === app.sessionId);
  if (i < 0) return { prev: null, next: null };
  return { prev: list[i - 1] || null, next: list[i + 1] || null };
}

function renderSessionNav() {
  const { prev, next } = neighbours();
  el.prevSession.disabled = !prev;
  el.nextSession.disabled = !next;
}

/** Open the previous or next session of the list in place: "back" still leads to the list. */
function openNeighbour(which) {
  const target = neighbours()[which];
  if (!target) return;
  history.replaceState(history.state, '', HASH_PREFIX + encodeURIComponent(target.id));
  route();
}

/** The event kinds that make a session's anomalies (server/routes/audit.py ANOMALY_EVENTS). */
const ANOMALY_EVENT_KINDS = new Set([
  'customer_disconnected', 'agent_lost', 'agent_disconnected', 'session_adopted', 'media_failed',
  'media_stalled', 'recording_alert', 'face_missing', 'multiple_faces', 'face_mismatch',
  'identity_rejected', 'liveness_failed', 'flow_stopped', 'flow_incomplete', 'step_refused',
]);

/** Timeline events in order, in seconds; `anomaly`: one of the session's anomalies. */
function eventTimes() {
  return Array.from(el.markers.children).map((m) => ({
    at: (Number(m.dataset.offsetMs) || 0) / 1000,
    anomaly: m.dataset.category === 'anomaly' || ANOMALY_EVENT_KINDS.has(m.dataset.kind),
  }));
}

/** Seek to the first anomaly after the playhead (the first of all when none is after it). */
function nextAnomaly() {
  const anomalies = eventTimes().filter((e) => e.anomaly);
  if (!anomalies.length) return;
  const now = replay.position;
  const target = anomalies.find((e) => e.at > now + 0.05) || anomalies[0];
  replay.seekTo(target.at);
}

/** Seek to the previous (-1) or next (+1) event from the playhead. */
function stepEvent(direction) {
  const times = eventTimes().map((e) => e.at);
  if (!times.length) return;
  const now = replay.position;
  const target = direction > 0
    ? times.find((at) => at > now + 0.05)
    : [...times].reverse().find((at) => at < now - 0.05);
  if (target !== undefined) replay.seekTo(target);
}

function renderNextAnomaly() {
  el.nextAnomaly.disabled = !eventTimes().some((e) => e.anomaly);
}

/** On a session: space plays or pauses, ←/→ go 5 s back or on, J/K the previous/next event. */
function onKeydown(event) {
  if (app.view !== 'detail' || !replay.loaded || event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  if (target instanceof HTMLElement
    && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (key === ' ') replay.toggle();
  else if (key === 'ArrowLeft') replay.seekTo(replay.position - 5);
  else if (key === 'ArrowRight') replay.seekTo(replay.position + 5);
  else if (key === 'j') stepEvent(-1);
  else if (key === 'k') stepEvent(1);
  else return;
  event.preventDefault();
}

// --- identity evidence ------------------------------------------------------------------

/**
 * The session's identity evidence (GET /api/identity/{id}/evidence): what was kept
 * and its SHA-256, images as thumbnails. The images are fetched with the bearer
 * token and shown from blob: URLs (each view is in the access log).
 */
const evidence = {
  seq: 0,
  /** the items, or null: not loaded, or face checks switched off (404) */
  items: null,
  /** item id -> object URL of its image, or 'failed' */
  images: new Map(),
  card: null,
  list: null,
  empty: null,
};

/** The evidence card, built once beside the session log. */
function evidenceCard() {
  if (evidence.card) return evidence.card;
  const card = node('div', { className: 'card evidence-card' });
  card.hidden = true;
  const heading = node('h2');
  heading.dataset.i18n = 'audit.evidenceTitle';
  heading.textContent = t('audit.evidenceTitle');
  evidence.list = node('ul', { className: 'evidence-list', testid: 'evidence-list' });
  evidence.empty = node('p', { className: 'muted small' });
  card.append(heading, evidence.list, evidence.empty);
  const logCard = el.sessionEvents.closest('.card');
  logCard.parentElement.insertBefore(card, logCard);
  evidence.card = card;
  return card;
}

function clearEvidence() {
  evidence.seq += 1;
  evidence.items = null;
  for (const url of evidence.images.values()) if (url !== 'failed') URL.revokeObjectURL(url);
  evidence.images.clear();
  renderEvidence();
}

async function loadEvidence(id) {
  clearEvidence();
  const seq = evidence.seq;
  let items;
  try {
    const data = await api(`/api/identity/${encodeURIComponent(id)}/evidence`);
    items = Array.isArray(data.items) ? data.items.filter((i) => i && typeof i.id === 'string') : [];
  } catch (err) {
    if (seq !== evidence.seq) return;
    // 404: face checks are switched off on this server (or nothing is known of the session)
    if (!(err instanceof ApiError && err.status === 404)) reportError(err, 'evidence failed to load');
    return;
  }
  if (seq !== evidence.seq) return;
  evidence.items = items;
  renderEvidence();
  await Promise.all(items.filter((i) => i.url).map((item) => loadEvidenceImage(item, seq)));
}

const RECEIPT_IMAGE_TYPES = new Set(['image/png', 'image/jpeg']);

/** The handwritten signature a receipt (the sealed JSON file) holds, as an image; null if none. */
function receiptSignature(text) {
  let receipt;
  try {
    receipt = JSON.parse(text);
  } catch {
    return null;
  }
  const image = receipt && receipt.payload && receipt.payload.signature_image;
  if (!image || typeof image.data !== 'string' || !RECEIPT_IMAGE_TYPES.has(image.media_type)) return null;
  try {
    const bytes = Uint8Array.from(atob(image.data), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: image.media_type });
  } catch {
    return null;
  }
}

async function loadEvidenceImage(item, seq) {
  let url = 'failed';
  try {
    const response = await fetch(item.url, {
      headers: login.authHeaders(), credentials: 'same-origin', cache: 'no-store',
    });
    if (response.ok) {
      const blob = item.kind === 'receipt' ? receiptSignature(await response.text()) : await response.blob();
      if (blob) url = URL.createObjectURL(blob);
    }
  } catch (err) {
    console.warn('evidence image failed', item.id, err);
  }
  if (seq !== evidence.seq) {
    if (url !== 'failed') URL.revokeObjectURL(url);
    return;
  }
  evidence.images.set(item.id, url);
  renderEvidence();
}

function renderEvidence() {
  const card = evidenceCard();
  const items = evidence.items;
  card.hidden = items === null;
  if (items === null) {
    evidence.list.replaceChildren();
    return;
  }
  evidence.empty.hidden = items.length > 0;
  setText(evidence.empty, t('audit.evidenceEmpty'));
  evidence.list.replaceChildren(...items.map(evidenceRow));
  if (app.detail) {
    renderAnomalies();
    renderIdentity();
  }
}

function evidenceRow(item) {
  const kind = label('audit.evidence', item.kind);
  const li = node('li', { className: 'evidence-item', testid: 'evidence-item', dataset: { kind: item.kind, id: item.id } });
  const image = evidence.images.get(item.id);
  let thumb;
  if (item.url && image && image !== 'failed') {
    thumb = node('a', { className: 'evidence-thumb', title: t('audit.evidenceOpen') });
    thumb.href = image;
    thumb.target = '_blank';
    thumb.rel = 'noopener';
    const img = node('img', { testid: item.kind === 'receipt' ? 'receipt-signature' : 'evidence-image' });
    img.src = image;
    img.alt = item.kind === 'receipt' ? t('audit.receiptSignature') : kind;
    thumb.append(img);
  } else {
    // data without a picture (a face template), an image still loading, or one that failed
    thumb = node('span', {
      className: 'evidence-thumb evidence-thumb-none',
      title: item.url && image === 'failed' ? t('audit.evidenceUnavailable') : undefined,
    });
    thumb.setAttribute('aria-hidden', 'true');
  }
  const text = node('div', { className: 'evidence-text' });
  text.append(
    node('span', { className: 'evidence-kind', text: kind }),
    node('span', { className: 'muted small', text: formatDateTime(item.created_at) }),
    node('code', { className: 'mono evidence-sha', text: item.sha256 || '', title: 'SHA-256' }),
  );
  li.append(thumb, text);
  return li;
}

// --- replay -----------------------------------------------------------------------------

/**
 * Two <video> elements driven as one: the longer recording leads; the other
 * follows, corrected whenever it drifts more than MAX_DRIFT_S while playing.
 * Both files share one timeline origin, so a time means the same in both.
 */
class DualPlayer {
  constructor(videos, statuses, onChange) {
    this.videos = videos; // {customer, agent}
    this.statuses = statuses;
    this.onChange = onChange;
    this.parties = Object.keys(videos);
    this.present = new Set();
    this.apiDuration = {};
    this.recordingDuration = 0;
    this.playing = false;
    this.dragging = false;
    this.rate = 1;
    this.frame = 0;
    this.lastCorrection = {};
    this.checkResidual = {};
    this.lead = {};
    this.loadSeq = 0;
    this.loaded = false;
    for (const party of this.parties) {
      const video = videos[party];
      video.addEventListener('loadedmetadata', () => this.changed(true));
      video.addEventListener('durationchange', () => this.changed(true));
      video.addEventListener('seeked', () => this.changed(false));
      video.addEventListener('ended', () => this.onEnded(party));
      video.addEventListener('error', () => this.onError(party));
      video.addEventListener('waiting', () => this.setStatus(party, this.playing ? t('audit.buffering') : ''));
      video.addEventListener('playing', () => this.setStatus(party, ''));
      video.addEventListener('canplay', () => this.setStatus(party, ''));
    }
  }

  /** Seconds of one party's file: the element's own, or the API's for a WebM without duration. */
  durationOf(party) {
    const video = this.videos[party];
    if (Number.isFinite(video.duration) && video.duration > 0) return video.duration;
    return this.apiDuration[party] || this.recordingDuration;
  }

  get duration() {
    let longest = this.recordingDuration;
    for (const party of this.present) longest = Math.max(longest, this.durationOf(party));
    return longest;
  }

  /** The leading party: the one with the longer file. */
  get leader() {
    let best = null;
    for (const party of this.parties) {
      if (!this.present.has(party)) continue;
      if (best === null || this.durationOf(party) > this.durationOf(best) + 0.01) best = party;
    }
    return best;
  }

  get position() {
    const leader = this.leader;
    return leader ? this.videos[leader].currentTime : 0;
  }

  load(recording) {
    this.unload();
    this.loadSeq += 1;
    this.recordingDuration = (Number(recording.duration_ms) || 0) / 1000;
    const outputs = Array.isArray(recording.outputs) ? recording.outputs : [];
    for (const party of this.parties) {
      const output = outputs.find((o) => o && o.party === party && o.url);
      const video = this.videos[party];
      video.playbackRate = this.rate;
      video.defaultPlaybackRate = this.rate;
      if (output) {
        this.present.add(party);
        this.apiDuration[party] = (Number(output.duration_ms) || 0) / 1000;
        video.src = output.url;
        video.load();
        this.setStatus(party, '');
      } else {
        this.setStatus(party, t('audit.noVideo'));
      }
    }
    this.loaded = this.present.size > 0;
    this.onChange(true);
  }

  unload() {
    this.pause();
    this.loadSeq += 1;
    for (const party of this.parties) {
      const video = this.videos[party];
      if (video.hasAttribute('src')) {
        video.removeAttribute('src');
        video.load();
      }
      this.setStatus(party, '');
    }
    this.present.clear();
    this.apiDuration = {};
    this.recordingDuration = 0;
    this.loaded = false;
    this.lastCorrection = {};
    this.checkResidual = {};
    this.lead = {};
  }

  setStatus(party, text) {
    const status = this.statuses[party];
    status.textContent = text;
    status.hidden = !text;
  }

  toggle() {
    if (this.playing) this.pause();
    else this.play();
  }

  play() {
    if (!this.loaded) return;
    if (this.position >= this.duration - 0.05) this.seekTo(0);
    this.playing = true;
    const position = this.position;
    for (const party of this.present) {
      if (position < this.durationOf(party) - 0.05) this.start(party);
    }
    this.loop();
    this.onChange(false);
  }

  start(party) {
    const seq = this.loadSeq;
    this.videos[party].play().catch((err) => {
      if (err.name === 'AbortError' || seq !== this.loadSeq) return; // paused or unloaded meanwhile
      console.warn(`${party} video did not play`, err);
      if (err.name === 'NotAllowedError') {
        this.pause();
        errors.show(t('audit.playBlocked'));
      }
    });
  }

  pause() {
    this.playing = false;
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    for (const party of this.parties) {
      const video = this.videos[party];
      if (!video.paused) video.pause();
    }
    this.onChange(false);
  }

  /** Put both videos at `seconds` (each clamped to its own length). */
  seekTo(seconds) {
    if (!this.loaded) return;
    const target = Math.min(Math.max(0, Number(seconds) || 0), this.duration || Infinity);
    for (const party of this.present) {
      const video = this.videos[party];
      const end = this.durationOf(party);
      video.currentTime = end > 0 ? Math.min(target, end) : target;
      this.lastCorrection[party] = performance.now();
      this.checkResidual[party] = false;
      if (this.playing && target < end - 0.05 && video.paused) this.start(party);
    }
    this.onChange(false);
  }

  setRate(rate) {
    this.rate = rate;
    for (const party of this.parties) {
      this.videos[party].defaultPlaybackRate = rate;
      this.videos[party].playbackRate = rate;
    }
  }

  loop() {
    cancelAnimationFrame(this.frame);
    const step = () => {
      if (!this.playing) return;
      this.sync();
      this.onChange(false);
      this.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  }

  /** Keep the follower on the leader's clock; hold it while the leader buffers. */
  sync() {
    const leaderParty = this.leader;
    if (!leaderParty) return;
    const leader = this.videos[leaderParty];
    const now = leader.currentTime;
    const leaderStalled = leader.paused || leader.seeking || leader.readyState < HTMLMediaElement.HAVE_FUTURE_DATA;
    for (const party of this.present) {
      if (party === leaderParty) continue;
      const video = this.videos[party];
      if (now >= this.durationOf(party) - 0.05) continue; // this file is over; the leader goes on
      if (leaderStalled) {
        if (!video.paused && !leader.ended) video.pause();
        continue;
      }
      this.follow(party, video, now, leader.playbackRate || 1);
      if (video.paused) this.start(party);
    }
    // the leader itself stopped though we play (e.g. it was waiting): nudge it on
    if (leader.paused && !leader.ended && now < this.durationOf(leaderParty) - 0.05) this.start(leaderParty);
  }

  /**
   * Correct one follower: jump to the leader's time when it drifted too far.
   * A jump lands late by the time the seek takes, so the residual drift seen
   * after each jump is learnt and the next jump aims that much ahead.
   */
  follow(party, video, now, rate) {
    if (video.seeking || performance.now() - (this.lastCorrection[party] || 0) < CORRECTION_COOLDOWN_MS) return;
    const drift = video.currentTime - now;
    if (this.checkResidual[party]) {
      this.checkResidual[party] = false;
      if (Math.abs(drift) < 1) {
        this.lead[party] = Math.min(0.75, Math.max(0, (this.lead[party] || 0) - drift / rate));
      }
    }
    if (Math.abs(drift) <= MAX_DRIFT_S) return;
    video.currentTime = Math.min(now + (this.lead[party] || 0) * rate, this.durationOf(party));
    this.lastCorrection[party] = performance.now();
    this.checkResidual[party] = true;
  }

  onEnded(party) {
    if (party === this.leader || this.parties.every((p) => !this.present.has(p) || this.videos[p].ended)) {
      this.pause();
    }
  }

  onError(party) {
    const video = this.videos[party];
    if (!video.hasAttribute('src')) return; // unloaded on purpose
    const seq = this.loadSeq;
    this.setStatus(party, t('audit.videoError'));
    probeVideo(video.currentSrc || video.src).then((text) => {
      if (seq !== this.loadSeq) return;
      errors.show(t('audit.videoErrorDetail', { party: t(`audit.party.${party}`), reason: text }), 15000);
    });
  }

  changed(durationKnown) {
    this.onChange(durationKnown);
  }
}

/**
 * Why a video did not load. A <video> sends the login cookie, not our bearer
 * token, so ask the URL for one byte the same way: a 401/403 there while the
 * API answers means the cookie is gone or belongs to another login in this
 * browser (an agent signed in in another tab).
 */
async function probeVideo(url) {
  try {
    const response = await fetch(url, { headers: { Range: 'bytes=0-0' }, credentials: 'same-origin' });
    if (response.ok) return t('audit.videoUndecodable');
    if (response.status === 401 || response.status === 403) return t('audit.videoCookie');
    const data = await response.json().catch(() => null);
    return apiErrorText(new ApiError(response.status, data && data.error, data && data.message));
  } catch {
    return t('error.unreachable');
  }
}

const replay = new DualPlayer(
  { customer: el.videoCustomer, agent: el.videoAgent },
  { customer: el.statusCustomer, agent: el.statusAgent },
  (durationKnown) => {
    if (durationKnown) layoutMarkers();
    renderPosition();
  },
);

function onSeekInput() {
  replay.dragging = true;
  replay.seekTo(Number(el.seek.value));
}

function onSeekChange() {
  replay.dragging = false;
  replay.seekTo(Number(el.seek.value));
}

// --- verdict ----------------------------------------------------------------------------

function sortedVerdicts() {
  const verdicts = app.detail ? [...app.detail.verdicts] : [];
  return verdicts.sort((a, b) => (Date.parse(b.at) || 0) - (Date.parse(a.at) || 0));
}

function verdictLine(verdict) {
  return t('audit.verdictBy', {
    result: label('audit.verdict', verdict.result),
    by: verdict.by || '',
    at: formatDateTime(verdict.at),
  });
}

/** The QC items ticked with a verdict, as "label, label" (null: a verdict from before QC items). */
function qcLine(verdict) {
  if (!Array.isArray(verdict.items)) return null;
  const ticked = verdict.items.map((item) => label('audit.qc', item));
  return t('audit.qcTicked', {
    count: verdict.items.length,
    total: el.qcItems.length,
    items: ticked.length ? ticked.join(t('audit.listSeparator')) : t('audit.qcNone'),
  });
}

/** A fail's reason code, shown as "Reason: …" (null without one). */
function reasonLine(verdict) {
  return verdict.reason ? t('audit.reasonIs', { reason: label('audit.reason', verdict.reason) }) : null;
}

/** The reason code is asked for only with a fail. */
function syncReasonField() {
  el.verdictReasonField.hidden = !el.verdictFail.checked;
}

function renderVerdicts() {
  const verdicts = sortedVerdicts();
  syncReasonField();
  const latest = verdicts[0];
  el.verdictSaved.hidden = !latest;
  el.verdictSaved.dataset.result = latest ? latest.result : '';
  el.verdictSaved.dataset.reason = (latest && latest.reason) || '';
  el.verdictSaved.replaceChildren();
  if (latest) {
    el.verdictSaved.append(
      node('span', { className: 'verdict-saved-label', text: t('audit.currentVerdict') }),
      node('strong', { text: verdictLine(latest) }),
    );
    const reason = reasonLine(latest);
    if (reason) el.verdictSaved.append(node('span', { className: 'verdict-reason', testid: 'verdict-saved-reason', text: reason }));
    const qc = qcLine(latest);
    if (qc) el.verdictSaved.append(node('span', { className: 'verdict-qc', testid: 'verdict-saved-qc', text: qc }));
    if (latest.notes) el.verdictSaved.append(node('span', { className: 'verdict-notes', text: latest.notes }));
  }
  el.verdictHistory.replaceChildren(...verdicts.map((verdict, index) => {
    const li = node('li', { className: 'verdict-entry', testid: 'verdict-entry', dataset: { result: verdict.result } });
    const head = node('div', { className: 'verdict-entry-head' });
    head.append(verdictBadge(verdict), node('span', { className: 'small muted', text: `${verdict.by || ''} · ${formatDateTime(verdict.at)}` }));
    if (index > 0) head.append(node('span', { className: 'small muted', text: t('audit.superseded') }));
    li.append(head);
    const reason = reasonLine(verdict);
    if (reason) li.append(node('p', { className: 'verdict-reason', text: reason }));
    const qc = qcLine(verdict);
    if (qc) li.append(node('p', { className: 'verdict-qc small muted', text: qc }));
    if (verdict.notes) li.append(node('p', { className: 'verdict-notes', text: verdict.notes }));
    return li;
  }));
  el.verdictHistoryEmpty.hidden = verdicts.length > 0 || !app.detail;
  el.verdictError.hidden = !app.verdictErrorKey;
  setText(el.verdictError, app.verdictErrorKey ? t(app.verdictErrorKey) : '');
  el.verdictSubmit.disabled = !app.detail || app.verdictPending;
  setText(el.verdictSubmit, t(app.verdictPending ? 'audit.saving' : (latest ? 'audit.verdictSubmitNew' : 'audit.verdictSubmit')));
}

async function onVerdictSubmit(event) {
  event.preventDefault();
  if (!app.detail || app.verdictPending) return;
  const chosen = el.verdictPass.checked ? 'pass' : el.verdictFail.checked ? 'fail' : null;
  if (!chosen) {
    app.verdictErrorKey = 'audit.chooseResult';
    renderVerdicts();
    el.verdictPass.focus();
    return;
  }
  const notes = el.verdictNotes.value.trim();
  const items = el.qcItems.filter((box) => box.checked).map((box) => box.dataset.item);
  const reason = chosen === 'fail' ? el.verdictReason.value : '';
  // the server's rules, said before anything is sent
  let missing = null;
  if (chosen === 'fail' && !reason) missing = ['audit.reasonRequired', el.verdictReason];
  else if (chosen === 'fail' && reason === 'other' && !notes) missing = ['audit.notesRequiredOther', el.verdictNotes];
  else if (chosen === 'pass' && items.length < el.qcItems.length && !notes) missing = ['audit.notesRequiredUnticked', el.verdictNotes];
  if (missing) {
    app.verdictErrorKey = missing[0];
    renderVerdicts();
    missing[1].focus();
    return;
  }
  const sessionId = app.sessionId;
  const seq = app.detailSeq;
  app.verdictErrorKey = null;
  app.verdictPending = true;
  renderVerdicts();
  try {
    const saved = await api(`/api/audit/sessions/${encodeURIComponent(sessionId)}/verdict`, {
      method: 'POST',
      body: chosen === 'fail' ? { result: chosen, notes, items, reason } : { result: chosen, notes, items },
    });
    const verdict = {
      result: saved.result || chosen,
      notes: saved.notes ?? notes,
      items: saved.items ?? items,
      reason: saved.reason ?? (reason || null),
      by: saved.by || (app.user && app.user.username) || '',
      at: saved.at || new Date().toISOString(),
    };
    for (const session of app.sessions || []) {
      if (session.id === sessionId) session.verdict = { result: verdict.result, by: verdict.by, at: verdict.at };
    }
    renderResults();
    if (seq !== app.detailSeq) return;
    app.detail.verdicts.push(verdict);
    app.detail.session.verdict = { result: verdict.result, by: verdict.by, at: verdict.at };
    el.verdictForm.reset();
    el.verdictSaved.classList.remove('flash');
    void el.verdictSaved.offsetWidth; // restart the highlight animation
    el.verdictSaved.classList.add('flash');
  } catch (err) {
    if (seq === app.detailSeq) reportError(err, 'verdict not saved');
  } finally {
    app.verdictPending = false;
    if (seq === app.detailSeq) renderVerdicts();
  }
}

// --- language ---------------------------------------------------------------------------

/** The business filter's options: "all", then each business the server offers, by name. */
function renderBusinessFilter() {
  const chosen = el.filterBusiness.value;
  const all = el.filterBusiness.querySelector('option[value=""]');
  const options = businessTypes().map((type) => {
    const option = document.createElement('option');
    option.value = type;
    option.textContent = businessName(type);
    return option;
  });
  el.filterBusiness.replaceChildren(all, ...options);
  el.filterBusiness.value = businessTypes().includes(chosen) ? chosen : '';
}

async function loadBusinesses() {
  await loadBusinessNames();
  renderBusinessFilter();
  renderResults();
  if (app.view === 'detail') renderDetail();
}

function renderAll() {
  login.renderError();
  renderBusinessFilter();
  renderAnomalyFilter();
  renderUser();
  renderResults();
  if (app.view === 'detail') renderDetail();
  for (const party of replay.parties) {
    const status = replay.statuses[party];
    if (!status.hidden && !replay.present.has(party) && replay.loaded) replay.setStatus(party, t('audit.noVideo'));
  }
  renderPosition();
}

// --- start ------------------------------------------------------------------------------

function init() {
  bindLangToggle(el.langToggle);
  applyI18n();
  renderAnomalyFilter();
  onLangChange(renderAll);
  el.logout.addEventListener('click', logout);
  el.searchForm.addEventListener('submit', (event) => {
    event.preventDefault();
    app.filters = readFilters();
    search(0);
  });
  el.searchForm.addEventListener('reset', () => {
    // after the browser has cleared the fields
    setTimeout(() => {
      app.filters = readFilters();
      search(0);
    }, 0);
  });
  el.pagePrev.addEventListener('click', () => search(Math.max(0, app.offset - PAGE_SIZE)));
  el.pageNext.addEventListener('click', () => search(app.offset + PAGE_SIZE));
  el.resultsBody.addEventListener('click', onResultsActivate);
  el.resultsBody.addEventListener('keydown', onResultsActivate);
  el.back.addEventListener('click', backToResults);
  el.legSelect.addEventListener('change', () => selectRecording(Number(el.legSelect.value) || 0));
  el.playPause.addEventListener('click', () => replay.toggle());
  el.seek.addEventListener('input', onSeekInput);
  el.seek.addEventListener('change', onSeekChange);
  el.speed.addEventListener('change', () => replay.setRate(Number(el.speed.value) || 1));
  el.timeline.addEventListener('click', onTimelineClick);
  el.nextAnomaly.addEventListener('click', nextAnomaly);
  el.prevSession.addEventListener('click', () => openNeighbour('prev'));
  el.nextSession.addEventListener('click', () => openNeighbour('next'));
  document.addEventListener('keydown', onKeydown);
  el.eventList.addEventListener('click', onEventListClick);
  el.verdictForm.addEventListener('submit', onVerdictSubmit);
  el.verdictForm.addEventListener('change', () => {
    syncReasonField();
    if (app.verdictErrorKey) {
      app.verdictErrorKey = null;
      renderVerdicts();
    }
  });
  window.addEventListener('hashchange', route);
  new ResizeObserver(() => {
    if (el.markers.clientWidth !== laidOutWidth) layoutMarkers();
  }).observe(el.timeline);
  window.vcounterAudit = { app, replay };
  showView('login');
  renderPosition();
  loadBusinesses();
  login.resume();
}

init();
