// The agent's side of a business flow, in the call panel: the
// checklist of steps with their status and times, the current step with the
// script to read aloud, what is still missing before it can be completed (the
// server's own words), the actions (complete the step, mark the spoken
// confirmation of a disclosure, push a document to the customer's screen) and
// what the flow produced (risk level, suitability, receipt, account number...).
//
// Test hooks: flow-panel, flow-checklist with flow-step items (data-step,
// data-status), flow-status (data-status), step-title (data-step, data-kind),
// step-missing, flow-error, step-next, mark-confirmed, document-select,
// push-document, flow-facts (items data-fact), flow-outcome.

import { bilingual, clockOf, outcomeText, stepTitle, stopReason } from './flow.js';
import { t } from './i18n.js';
import { byId, byTestId, setText } from './ui.js';

/** An error this soon after a flow action is that action's (shown in the panel). */
const REPLY_MS = 5000;

function node(tag, { className, text, testid, dataset } = {}) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (testid) e.dataset.testid = testid;
  if (dataset) for (const [k, v] of Object.entries(dataset)) e.dataset[k] = String(v ?? '');
  return e;
}

export class AgentFlow {
  /** @param {{send: (msg: object) => boolean}} options */
  constructor({ send }) {
    this.send = send;
    this.el = {
      panel: byId('flow-panel'),
      title: byId('flow-title'),
      status: byTestId('flow-status', byId('flow-panel')),
      checklist: byTestId('flow-checklist'),
      current: byId('flow-current'),
      stepTitle: byTestId('step-title'),
      scriptLabel: byId('flow-script-label'),
      script: byId('flow-script'),
      customer: byId('flow-customer'),
      missing: byTestId('step-missing'),
      error: byTestId('flow-error'),
      markConfirmed: byTestId('mark-confirmed'),
      next: byTestId('step-next'),
      facts: byTestId('flow-facts'),
      documentSelect: byTestId('document-select'),
      push: byTestId('push-document'),
      pushed: byId('flow-pushed'),
    };
    this.el.next.addEventListener('click', () => this.next());
    this.el.markConfirmed.addEventListener('click', () => this.markConfirmed());
    this.el.push.addEventListener('click', () => this.pushDocument());
    this.el.documentSelect.addEventListener('change', () => this.render());
    this.reset();
  }

  /** The call is over (or another starts): nothing of this customer's flow stays. */
  reset() {
    this.sessionId = null;
    this.state = null;
    this.early = null;
    /** step id -> its result while it was current (kept after it is done) */
    this.results = new Map();
    this.pending = null;
    this.error = null;
    this.lastPush = null;
    this.docKey = '';
    clearTimeout(this.errorTimer);
    this.render();
  }

  /** A call started: show its flow state if it came first. */
  begin(sessionId) {
    if (this.sessionId !== sessionId) {
      const early = this.early;
      this.reset();
      this.sessionId = sessionId;
      if (early && early.session_id === sessionId) this.onState(early);
    }
  }

  onState(msg) {
    if (!msg.state || typeof msg.state !== 'object') return;
    if (msg.session_id !== this.sessionId) {
      this.early = msg;
      return;
    }
    const before = this.state && this.state.current ? this.state.current.id : null;
    this.state = msg.state;
    const current = msg.state.current;
    if (current && current.result && Object.keys(current.result).length) {
      this.results.set(current.id, { kind: current.kind, ...current.result });
    }
    if ((current ? current.id : null) !== before || !this.pending || this.pending.type !== 'push_document') {
      // the server took the action up
      this.pending = null;
    }
    if (current && current.id !== before) this.error = null;
    this.render();
  }

  /** Whether an error reply belongs to the flow panel (then it is shown there). */
  takesError(code) {
    if (code === 'step_refused' || code === 'flows_unavailable') return true;
    return (code === 'invalid_message' || code === 'bad_state') && this.pending !== null
      && Date.now() - this.pending.at < REPLY_MS;
  }

  onError(message) {
    this.pending = null;
    this.error = message || t('error.step_refused');
    clearTimeout(this.errorTimer);
    this.errorTimer = setTimeout(() => {
      this.error = null;
      this.render();
    }, 15000);
    this.render();
  }

  act(message) {
    if (!this.send(message)) {
      this.onError(t('error.unreachable'));
      return false;
    }
    this.error = null;
    this.pending = { type: message.type, at: Date.now() };
    setTimeout(() => {
      if (this.pending && Date.now() - this.pending.at >= REPLY_MS) {
        this.pending = null;
        this.render();
      }
    }, REPLY_MS + 50);
    this.render();
    return true;
  }

  next() {
    const step = this.state && this.state.current;
    if (step) this.act({ type: 'step_next', step_id: step.id });
  }

  markConfirmed() {
    const step = this.state && this.state.current;
    if (step && step.kind === 'disclosure') this.act({ type: 'mark_confirmed', step_id: step.id });
  }

  /** The "next step" shortcut: what the step-next button would do, when it can be pressed. */
  nextFromKey() {
    if (this.el.panel.hidden || this.el.next.disabled) return false;
    this.next();
    return true;
  }

  /** The "customer confirmed" shortcut: marks a disclosure step, when its button can be pressed. */
  confirmFromKey() {
    const button = this.el.markConfirmed;
    if (this.el.panel.hidden || button.hidden || button.disabled) return false;
    this.markConfirmed();
    return true;
  }

  pushDocument() {
    const id = this.el.documentSelect.value;
    if (!id) return;
    if (this.act({ type: 'push_document', document_id: id })) {
      this.lastPush = { id, at: Date.now() / 1000 };
      // the server answers only with an error: no news is good news
      setTimeout(() => {
        if (this.pending && this.pending.type === 'push_document') {
          this.pending = null;
          this.render();
        }
      }, 800);
    }
  }

  // --- rendering -----------------------------------------------------------------

  render() {
    const { el } = this;
    const state = this.state;
    el.panel.hidden = !state;
    if (!state) {
      el.checklist.replaceChildren();
      el.facts.replaceChildren();
      el.stepTitle.dataset.step = '';
      el.stepTitle.dataset.kind = '';
      el.status.dataset.status = '';
      return;
    }
    setText(el.title, bilingual(state.title) || t('flow.title'));
    el.status.dataset.status = state.status || '';
    el.status.className = `badge badge-${state.status === 'completed' ? 'ok'
      : state.status === 'stopped' ? 'danger' : 'info'}`;
    let status = t(`flow.status.${state.status}`);
    if (state.status === 'stopped' && state.reason) status = `${status}: ${stopReason(state.reason)}`;
    setText(el.status, status);
    this.renderChecklist(state);
    this.renderCurrent(state.current);
    this.renderFacts(state);
    this.renderPush(state);
  }

  renderChecklist(state) {
    const steps = Array.isArray(state.steps) ? state.steps : [];
    this.el.checklist.replaceChildren(...steps.map((s, i) => {
      const li = node('li', {
        className: 'flow-step',
        testid: 'flow-step',
        dataset: { step: s.id, status: s.status, kind: s.kind },
      });
      if (s.status === 'active') li.setAttribute('aria-current', 'step');
      const times = [clockOf(s.started_at), clockOf(s.ended_at)].filter(Boolean).join('–');
      li.append(
        node('span', { className: 'flow-step-mark', text: s.status === 'done' ? '✓' : s.status === 'failed' ? '✕' : String(i + 1) }),
        node('span', { className: 'flow-step-name', text: stepTitle(s) }),
        node('span', { className: 'flow-step-status', text: t(`flow.stepStatus.${s.status}`) }),
        node('span', { className: 'flow-step-time mono', text: times }),
      );
      return li;
    }));
  }

  renderCurrent(step) {
    const { el } = this;
    el.current.hidden = !step;
    el.stepTitle.dataset.step = step ? step.id : '';
    el.stepTitle.dataset.kind = step ? step.kind : '';
    setText(el.stepTitle, step ? stepTitle(step) : '');
    const script = step ? bilingual(step.text) : '';
    el.script.hidden = !script;
    el.scriptLabel.hidden = !script || step.kind !== 'disclosure';
    setText(el.script, script);
    const missing = step && step.missing ? bilingual(step.missing) : null;
    el.missing.dataset.missing = missing ? 'true' : 'false';
    el.missing.dataset.tone = missing ? 'warn' : 'ok';
    setText(el.missing, step ? (missing || t('flow.ready')) : '');
    let customer = '';
    if (step && ['consent', 'disclosure', 'questionnaire', 'document', 'signature'].includes(step.kind)) {
      customer = t(step.customer_done ? 'flow.customerDone' : 'flow.customerPending');
    }
    setText(el.customer, customer);
    el.customer.dataset.done = step ? String(Boolean(step.customer_done)) : '';
    const busy = this.pending !== null && this.pending.type !== 'push_document';
    el.next.disabled = !step || Boolean(missing) || busy;
    el.next.dataset.i18n = step && step.kind === 'outcome' ? 'flow.nextOutcome' : 'flow.next';
    setText(el.next, t(el.next.dataset.i18n));
    const disclosure = Boolean(step) && step.kind === 'disclosure';
    el.markConfirmed.hidden = !disclosure;
    el.markConfirmed.disabled = !disclosure || step.agent_marked || busy;
    el.markConfirmed.dataset.marked = disclosure ? String(Boolean(step.agent_marked)) : '';
    setText(el.markConfirmed, t(disclosure && step.agent_marked ? 'flow.marked' : 'flow.markConfirmed'));
    el.error.hidden = !this.error;
    setText(el.error, this.error || '');
  }

  renderFacts(state) {
    const rows = [];
    const add = (fact, label, value) => {
      const div = node('div', { dataset: { fact }, testid: fact === 'outcome' ? 'flow-outcome' : 'flow-fact' });
      div.append(node('dt', { text: label }), node('dd', { text: value }));
      rows.push(div);
    };
    for (const [, r] of this.results) {
      if (r.kind === 'questionnaire' && r.level) {
        add('questionnaire', t('flow.fact.questionnaire'),
          t('flow.fact.questionnaireValue', { level: r.level, score: r.score ?? '?' }));
      } else if (r.kind === 'suitability' && r.product) {
        add('suitability', t('flow.fact.suitability'), t('flow.fact.suitabilityValue', {
          product: r.product, risk: r.product_risk || '', level: r.customer_level || '',
        }));
      }
    }
    if (state.receipt && state.receipt.receipt_id) {
      add('receipt', t('flow.fact.receipt'), state.receipt.receipt_id);
    }
    if (state.outcome) add('outcome', t('flow.fact.outcome'), outcomeText(state.outcome));
    this.el.facts.replaceChildren(...rows);
    this.el.facts.hidden = rows.length === 0;
  }

  renderPush(state) {
    const docs = Array.isArray(state.documents) ? state.documents : [];
    const select = this.el.documentSelect;
    const key = docs.map((d) => `${d.id}:${bilingual(d.title)}`).join('|');
    if (key !== this.docKey) {
      const chosen = select.value;
      this.docKey = key;
      select.replaceChildren(...docs.map((d) => {
        const option = node('option', { text: bilingual(d.title) || d.id });
        option.value = d.id;
        return option;
      }));
      if (docs.some((d) => d.id === chosen)) select.value = chosen;
    }
    const running = state.status === 'running';
    this.el.push.disabled = !docs.length || !running || (this.pending && this.pending.type === 'push_document');
    const last = this.lastPush;
    setText(this.el.pushed, last && last.id === select.value ? t('flow.pushed', { time: clockOf(last.at) }) : '');
  }

  refresh() {
    this.docKey = '';
    this.render();
  }
}
