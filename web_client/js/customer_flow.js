// The customer's side of a business flow, in the call view: the
// current step's title and text and what it needs from the customer (accept
// the consents, confirm a disclosure, answer the questionnaire, read the
// document to its end, sign), the sealed receipt to keep, and how the flow
// ended. Documents the agent pushes show in an overlay. The signature pad
// opens over the whole screen when the signature step comes (#sign-overlay);
// closing it without signing goes back to the step, whose button opens it again.
//
// The customer sees words only: no receipt id, step id, reason code or the
// server's own (English) refusal text; the receipt id stays on the download
// link's data-receipt-id.
//
// The step's buttons go in their own bar (#step-actions) under the scrolling
// part of the panel (#step-scroll), so the step's main action stays in sight
// however long its text, questions or document are.
//
// Test hooks: step-title (data-step, data-kind), consent-accept, consent-decline,
// consent-face, disclosure-confirm, question-<id> (radio group), questionnaire-submit,
// document-view, document-end, signature-overlay, signature-pad, signature-clear,
// signature-submit, signature-close, signature-open, receipt-download,
// flow-status (data-status), flow-error, document-close.

import {
  SignaturePad, bilingual, outcomeText, renderMarkdown, scrolledToEnd, stepTitle, stopReason,
} from './flow.js';
import { has, t } from './i18n.js';
import { byId, byTestId, moveInto, setText } from './ui.js';

function node(tag, { className, text, testid, i18n } = {}) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (i18n) e.textContent = t(i18n);
  else if (text !== undefined && text !== null) e.textContent = String(text);
  if (testid) e.dataset.testid = testid;
  return e;
}

function button(testid, textKey, className = 'btn btn-primary') {
  const b = node('button', { className, testid, i18n: textKey });
  b.type = 'button';
  return b;
}

export class CustomerFlow {
  /**
   * @param {object} options
   * @param {(msg: object) => boolean} options.send  send a signaling message
   * @param {() => boolean} options.faceConsent  the face-verification consent the customer has given
   * @param {(accepted: boolean) => void} options.onFaceConsent  the consent step set it
   */
  constructor({ send, faceConsent, onFaceConsent }) {
    this.send = send;
    this.faceConsent = faceConsent;
    this.onFaceConsent = onFaceConsent;
    this.el = {
      panel: byId('flow-panel'),
      name: byId('flow-name'),
      progress: byTestId('flow-progress'),
      title: byTestId('step-title'),
      text: byId('step-text'),
      body: byId('step-body'),
      scroll: byId('step-scroll'),
      actions: byId('step-actions'),
      wait: byId('step-wait'),
      error: byTestId('flow-error'),
      status: byTestId('flow-status'),
      receiptBox: byId('receipt-box'),
      receiptText: byId('receipt-text'),
      receiptLink: byTestId('receipt-download'),
      overlay: byId('doc-overlay'),
      overlayTitle: byId('doc-overlay-title'),
      overlayView: byId('doc-overlay-view'),
      overlayClose: byTestId('document-close'),
      sign: byId('sign-overlay'),
      signArea: byId('sign-area'),
      signActions: byId('sign-actions'),
      signClose: byTestId('signature-close'),
    };
    this.el.overlayClose.addEventListener('click', () => this.closeOverlay());
    this.el.signClose.addEventListener('click', () => this.closeSign());
    this.el.sign.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') this.closeSign();
    });
    // a phone turned: an empty pad takes the new size
    window.addEventListener('resize', () => this.fitPad());
    this.el.overlay.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') this.closeOverlay();
    });
    this.reset();
  }

  /** A new session (or none): nothing of the last flow stays, except a receipt to keep. */
  reset({ keepReceipt = false } = {}) {
    /** how the last flow ended ({status, outcome}), kept with the receipt for the end screen */
    const last = this.state ? { status: this.state.status, outcome: this.state.outcome || null } : null;
    this.result = keepReceipt ? last || this.result || null : null;
    this.sessionId = null;
    this.state = null;
    /** document id -> {id, title, sha256, content} received */
    this.documents = new Map();
    /** the step the body was built for, and what the customer did in it */
    this.builtFor = '';
    this.answers = {};
    this.readTo = new Set();
    this.sent = new Set();
    this.pad = null;
    /** the signature step whose pad the customer closed (it does not open again by itself) */
    this.signClosed = '';
    this.pushed = null;
    this.error = null;
    clearTimeout(this.errorTimer);
    if (!keepReceipt) this.setReceipt(null);
    this.closeOverlay();
    this.closeSign();
    this.el.signArea.replaceChildren();
    this.el.signActions.replaceChildren();
    this.el.body.replaceChildren();
    this.el.actions.replaceChildren();
    this.el.actions.hidden = true;
    this.render();
  }

  // --- messages ----------------------------------------------------------------

  onState(msg) {
    if (!msg.state || typeof msg.state !== 'object') return;
    const before = this.state && this.state.current ? this.state.current.id : null;
    this.sessionId = msg.session_id;
    this.state = msg.state;
    const now = this.state.current ? this.state.current.id : null;
    if (now !== before) {
      this.error = null;
      this.sent.clear();
    }
    this.render();
  }

  onDocument(msg) {
    const doc = msg.document;
    if (!doc || typeof doc.id !== 'string') return;
    this.documents.set(doc.id, doc);
    const step = this.state && this.state.current;
    if (msg.pushed) this.openOverlay(doc);
    else if (step && step.document && step.document.id === doc.id) this.render(true);
  }

  onReceipt(msg) {
    if (typeof msg.content !== 'string') return;
    this.setReceipt(msg);
    this.render();
  }

  /** A step_refused (or other flow error) from the server: shown in the panel. */
  onError(message) {
    this.error = message || t('error.generic');
    this.sent.clear();
    clearTimeout(this.errorTimer);
    this.errorTimer = setTimeout(() => {
      this.error = null;
      this.render();
    }, 15000);
    this.render();
  }

  /** The receipt box belongs to the call view during the call and to the end screen after it. */
  placeReceipt(slot) {
    moveInto(slot, this.el.receiptBox);
  }

  setReceipt(msg) {
    const link = this.el.receiptLink;
    if (link.dataset.url) URL.revokeObjectURL(link.dataset.url);
    link.dataset.url = '';
    this.receipt = msg;
    if (msg) {
      // byte-exact: the receipt's signature covers exactly this text
      const url = URL.createObjectURL(new Blob([msg.content], { type: 'application/json' }));
      link.href = url;
      link.dataset.url = url;
      link.download = msg.filename || 'receipt.json';
      link.dataset.receiptId = msg.receipt_id || '';
    } else {
      link.removeAttribute('href');
      link.dataset.receiptId = '';
    }
  }

  // --- sending -----------------------------------------------------------------

  act(message) {
    if (!this.send(message)) {
      this.onError(t('error.unreachable'));
      return false;
    }
    this.error = null;
    this.sent.add(message.type);
    this.render();
    return true;
  }

  // --- rendering -----------------------------------------------------------------

  render(rebuild = false) {
    const { el } = this;
    const state = this.state;
    el.panel.hidden = !state;
    this.renderReceipt();
    if (!state) {
      el.title.dataset.step = '';
      el.title.dataset.kind = '';
      el.status.hidden = true;
      el.status.dataset.status = '';
      return;
    }
    const step = state.current;
    setText(el.name, bilingual(state.title));
    const steps = Array.isArray(state.steps) ? state.steps : [];
    const index = step ? steps.findIndex((s) => s.id === step.id) : -1;
    setText(el.progress, index >= 0 ? t('flow.progress', { n: index + 1, total: steps.length }) : '');
    el.title.dataset.step = step ? step.id : '';
    el.title.dataset.kind = step ? step.kind : '';
    const title = step ? stepTitle(step) : '';
    setText(el.title, title && title !== step.id ? title : bilingual(state.title) || t('flow.title'));
    setText(el.text, step ? bilingual(step.text) : '');
    el.text.hidden = !step || !step.text;

    const ended = state.status === 'completed' || state.status === 'stopped';
    el.status.hidden = !ended;
    el.status.dataset.status = ended ? state.status : '';
    el.status.dataset.tone = state.status === 'completed' ? 'ok' : 'error';
    let status = '';
    if (state.status === 'completed') {
      status = t('flow.completed');
      const outcome = outcomeText(state.outcome);
      if (outcome) status = `${status} ${outcome}`;
    } else if (state.status === 'stopped') {
      const known = state.reason && has(`flow.reason.${state.reason}`);
      const reason = known ? stopReason(state.reason) : t('flow.reason.other');
      status = t('flow.stopped', { reason });
    }
    setText(el.status, status);

    const key = step ? `${step.id}:${step.kind}` : '';
    if (rebuild || key !== this.builtFor) {
      this.builtFor = key;
      this.build(step);
    }
    this.update(step);
    el.error.hidden = !this.error;
    setText(el.error, this.error || '');
  }

  renderReceipt() {
    const r = this.receipt;
    this.el.receiptBox.hidden = !r;
    setText(this.el.receiptText, r ? t('flow.receiptText') : '');
    setText(this.el.receiptLink, t('flow.receiptDownload'));
  }

  /** Build what the step needs from the customer (once per step: inputs keep their state). */
  build(step) {
    const body = this.el.body;
    body.replaceChildren();
    this.el.actions.replaceChildren();
    this.el.signArea.replaceChildren();
    this.el.signActions.replaceChildren();
    this.hideSign();
    this.el.scroll.scrollTop = 0;
    this.pad = null;
    this.parts = {};
    this.buildStep(step);
    this.el.actions.hidden = this.el.actions.childElementCount === 0;
  }

  buildStep(step) {
    const body = this.el.body;
    if (!step) return;
    const kind = step.kind;
    if (kind === 'consent') this.buildConsent(step);
    else if (kind === 'disclosure') this.buildDisclosure(step);
    else if (kind === 'questionnaire') this.buildQuestionnaire(step);
    else if (kind === 'document') this.buildDocument(step);
    else if (kind === 'signature') this.buildSignature(step);
    else if (kind === 'suitability' && step.product) {
      const p = step.product;
      body.append(node('p', { className: 'step-product', text: `${bilingual(p.name)} · ${p.code} · ${p.risk_level}` }));
    }
  }

  buildConsent(step) {
    const parts = this.parts;
    const consents = Array.isArray(step.consents) ? step.consents : [];
    const list = node('ul', { className: 'step-consents' });
    for (const c of consents) list.append(node('li', { i18n: `flow.consent.${c}` }));
    this.el.body.append(list);
    if (consents.includes('face')) {
      const label = node('label', { className: 'consent-row' });
      parts.face = node('input', { testid: 'consent-face' });
      parts.face.type = 'checkbox';
      parts.face.checked = this.faceConsent();
      label.append(parts.face, node('span', { i18n: 'flow.faceConsent' }));
      this.el.body.append(label, node('p', { className: 'small muted', i18n: 'flow.faceConsentHint' }));
    }
    parts.accept = button('consent-accept', 'flow.accept', 'btn btn-primary btn-lg');
    parts.decline = button('consent-decline', 'flow.decline', 'btn btn-secondary btn-lg');
    parts.accept.addEventListener('click', () => {
      const face = Boolean(parts.face && parts.face.checked);
      if (this.act({ type: 'consent_accept', step_id: step.id, face }) && parts.face) this.onFaceConsent(face);
    });
    parts.decline.addEventListener('click', () => {
      if (window.confirm(t('flow.declineConfirm'))) this.act({ type: 'consent_decline', step_id: step.id });
    });
    this.el.actions.append(parts.decline, parts.accept);
  }

  buildDisclosure(step) {
    const parts = this.parts;
    if (step.document) {
      parts.open = button('document-open', 'flow.openDocument', 'btn btn-secondary');
      parts.open.addEventListener('click', () => {
        const doc = this.documents.get(step.document.id);
        if (doc) this.openOverlay(doc);
      });
      this.el.body.append(parts.open);
    }
    parts.confirm = button('disclosure-confirm', 'flow.disclosureConfirm', 'btn btn-primary btn-lg');
    parts.confirm.addEventListener('click', () => this.act({ type: 'disclosure_confirm', step_id: step.id }));
    this.el.actions.append(parts.confirm);
  }

  buildQuestionnaire(step) {
    const parts = this.parts;
    const questions = Array.isArray(step.questions) ? step.questions : [];
    const form = node('form', { className: 'questionnaire' });
    form.id = `questionnaire-${step.id}`;
    form.noValidate = true;
    questions.forEach((q, qi) => {
      const set = node('fieldset', { className: 'question', testid: `question-${q.id}` });
      set.dataset.question = q.id;
      set.setAttribute('role', 'radiogroup');
      set.append(node('legend', { text: `${qi + 1}. ${bilingual(q.text)}` }));
      for (const o of Array.isArray(q.options) ? q.options : []) {
        const label = node('label', { className: 'choice-row' });
        const input = node('input');
        input.type = 'radio';
        input.name = `q-${step.id}-${q.id}`;
        input.value = o.id;
        input.checked = this.answers[q.id] === o.id;
        input.addEventListener('change', () => {
          this.answers[q.id] = o.id;
          this.update(step);
        });
        label.append(input, node('span', { text: bilingual(o.text) }));
        set.append(label);
      }
      form.append(set);
    });
    parts.questions = questions;
    parts.submit = button('questionnaire-submit', 'flow.submitAnswers', 'btn btn-primary btn-lg');
    parts.submit.type = 'submit';
    parts.submit.setAttribute('form', form.id); // it sits in the action bar, outside the form
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const answers = {};
      for (const q of questions) if (this.answers[q.id]) answers[q.id] = this.answers[q.id];
      if (Object.keys(answers).length !== questions.length) return;
      this.act({ type: 'questionnaire_submit', step_id: step.id, answers });
    });
    this.el.body.append(form);
    this.el.actions.append(parts.submit);
  }

  /** The document of the step in a scrollable box; `onEnd` runs once the customer reached its end. */
  documentBox(info, onEnd) {
    const doc = info ? this.documents.get(info.id) : null;
    const box = node('div', { className: 'document-view', testid: 'document-view' });
    box.tabIndex = 0;
    box.setAttribute('role', 'document');
    if (info) box.dataset.document = info.id;
    if (doc && (!info.sha256 || doc.sha256 === info.sha256)) {
      renderMarkdown(box, doc.content);
      box.dataset.sha256 = doc.sha256;
    } else {
      box.append(node('p', { className: 'muted', i18n: 'flow.documentLoading' }));
    }
    const title = node('p', { className: 'document-title', text: info ? bilingual(info.title) : '' });
    this.el.body.append(title, box);
    if (onEnd) {
      const check = () => {
        if (box.dataset.sha256 && scrolledToEnd(box)) onEnd();
      };
      box.addEventListener('scroll', check, { passive: true });
      // a short document (or a tall screen) has nothing to scroll
      requestAnimationFrame(check);
    }
    return box;
  }

  buildDocument(step) {
    const parts = this.parts;
    const info = step.document;
    parts.box = this.documentBox(info, () => {
      if (!this.readTo.has(step.id)) {
        this.readTo.add(step.id);
        this.update(step);
      }
    });
    parts.hint = node('p', { className: 'small muted', i18n: 'flow.scrollHint' });
    parts.end = button('document-end', 'flow.documentEnd', 'btn btn-primary btn-lg');
    parts.end.addEventListener('click', () => {
      if (!this.readTo.has(step.id) || !info) return;
      this.act({ type: 'document_read', step_id: step.id, sha256: info.sha256 });
    });
    this.el.body.append(parts.hint);
    this.el.actions.append(parts.end);
  }

  buildSignature(step) {
    const parts = this.parts;
    parts.box = this.documentBox(step.document, null);
    parts.box.classList.add('document-view-short');
    const wrap = node('div', { className: 'signature-wrap' });
    const canvas = node('canvas', { className: 'signature-pad', testid: 'signature-pad' });
    canvas.width = 600;
    canvas.height = 300;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', t('flow.signHere'));
    const hint = node('span', { className: 'signature-hint', i18n: 'flow.signHere' });
    wrap.append(canvas, hint);
    parts.clear = button('signature-clear', 'flow.clearSignature', 'btn btn-secondary');
    parts.clear.addEventListener('click', () => this.pad.clear());
    parts.submit = button('signature-submit', 'flow.sign', 'btn btn-primary btn-lg');
    parts.submit.addEventListener('click', () => {
      const png = this.pad.png();
      if (!png) {
        this.onError(t('flow.signatureEmpty'));
        return;
      }
      if (!step.document) return;
      const message = {
        type: 'signature_submit', step_id: step.id, document_sha256: step.document.sha256, image_png: png,
      };
      if (this.act(message)) this.closeSign();
    });
    parts.open = button('signature-open', 'flow.signOpen', 'btn btn-primary btn-lg');
    parts.open.addEventListener('click', () => this.openSign());
    this.el.signArea.append(wrap);
    this.el.signActions.append(parts.clear, parts.submit);
    this.el.actions.append(parts.open);
    // last: the pad reports its (empty) state at once, and update() needs the buttons
    this.pad = new SignaturePad(canvas, { onChange: () => this.update(step) });
    if (!step.customer_done && this.signClosed !== step.id) this.openSign();
  }

  // --- the full-screen signature pad -------------------------------------------------

  openSign() {
    if (!this.pad) return;
    this.el.sign.hidden = false;
    this.fitPad();
    this.el.signClose.focus({ preventScroll: true });
  }

  /** Back to the step without signing (what was drawn stays). */
  closeSign() {
    const step = this.state && this.state.current;
    if (!this.el.sign.hidden && step && step.kind === 'signature') this.signClosed = step.id;
    this.hideSign();
  }

  hideSign() {
    this.el.sign.hidden = true;
  }

  /** An empty pad draws at its size on screen (strokes are not stretched); a drawing keeps its canvas. */
  fitPad() {
    const pad = this.pad;
    if (!pad || this.el.sign.hidden || !pad.empty) return;
    const rect = pad.canvas.getBoundingClientRect();
    const width = Math.round(Math.min(1200, rect.width));
    const height = Math.round(Math.min(1200, rect.height));
    if (width < 50 || height < 50 || (width === pad.canvas.width && height === pad.canvas.height)) return;
    pad.canvas.width = width;
    pad.canvas.height = height;
    pad.clear(); // a resized canvas loses its pen: set it again
  }

  /** Enable what can be done now; say what the customer waits for. */
  update(step) {
    const parts = this.parts || {};
    const done = Boolean(step && step.customer_done);
    let wait = '';
    if (step) {
      const kind = step.kind;
      const sent = (type) => this.sent.has(type);
      if (kind === 'consent') {
        parts.accept.disabled = done || sent('consent_accept') || sent('consent_decline');
        parts.decline.disabled = parts.accept.disabled;
        if (parts.face) parts.face.disabled = parts.accept.disabled;
      } else if (kind === 'disclosure') {
        parts.confirm.disabled = done || sent('disclosure_confirm');
        if (parts.open) parts.open.hidden = !this.documents.has(step.document.id);
      } else if (kind === 'questionnaire') {
        const all = parts.questions.every((q) => this.answers[q.id]);
        parts.submit.disabled = done || !all || sent('questionnaire_submit');
        for (const input of this.el.body.querySelectorAll('input[type=radio]')) input.disabled = done;
      } else if (kind === 'document') {
        const read = this.readTo.has(step.id);
        parts.end.disabled = done || !read || sent('document_read');
        parts.hint.hidden = read || done;
      } else if (kind === 'signature') {
        const busy = done || sent('signature_submit');
        parts.submit.disabled = busy || !this.pad || this.pad.empty;
        parts.clear.disabled = busy;
        if (this.pad) this.pad.canvas.dataset.disabled = String(busy);
      }
      if (kind === 'signature' && parts.open) {
        parts.open.hidden = done || sent('signature_submit');
        if (parts.open.hidden) this.closeSign();
      }
      if (done) wait = t(kind === 'signature' ? 'flow.signed' : 'flow.waitAgent');
      else if (kind === 'identity') wait = t('flow.waitIdentity');
      else if (kind === 'suitability') wait = t('flow.waitSuitability');
      else if (kind === 'outcome') wait = t('flow.waitOutcome');
    }
    this.el.wait.hidden = !wait;
    setText(this.el.wait, wait);
  }

  // --- pushed documents ------------------------------------------------------------

  openOverlay(doc) {
    this.pushed = doc;
    setText(this.el.overlayTitle, bilingual(doc.title));
    renderMarkdown(this.el.overlayView, doc.content);
    this.el.overlayView.dataset.document = doc.id;
    this.el.overlayView.dataset.sha256 = doc.sha256 || '';
    this.el.overlayView.scrollTop = 0;
    this.el.overlay.hidden = false;
    this.el.overlayClose.focus({ preventScroll: true });
  }

  closeOverlay() {
    this.pushed = null;
    this.el.overlay.hidden = true;
    this.el.overlayView.replaceChildren();
  }

  /** The language changed: rebuild the texts (answers, reading and the drawing are kept). */
  refresh() {
    if (this.pushed) {
      const doc = this.pushed;
      setText(this.el.overlayTitle, bilingual(doc.title));
    }
    const pad = this.pad;
    const key = this.builtFor;
    const signing = !this.el.sign.hidden;
    this.builtFor = '';
    this.render();
    if (pad && this.pad && key === this.builtFor) {
      // keep what was drawn, and the pad open or closed as it was
      if (!signing) this.closeSign();
      this.pad.canvas.width = pad.canvas.width;
      this.pad.canvas.height = pad.canvas.height;
      this.pad.clear();
      this.pad.ctx.drawImage(pad.canvas, 0, 0);
      this.pad.inked = pad.inked;
      this.update(this.state && this.state.current);
    }
  }
}
