// Business flows: what the customer page and the agent workbench share.
//
// The server runs the script (server/flow_engine.py) and sends both parties a
// `flow_state` on every change; the pages only show it and send what a step
// needs. Documents are Markdown from the flow files: they are rendered here
// with DOM nodes and textContent only (headings, paragraphs, lists, **bold**),
// so no text from a document is ever parsed as HTML.

import { has, serverText, t } from './i18n.js';

/** The server refuses a signature image over 60,000 base64 characters. */
export const SIGNATURE_MAX_CHARS = 60000;

/** A bilingual text from the server ({en, zh}) in the page's language. */
export function bilingual(text) {
  if (!text || typeof text !== 'object') return typeof text === 'string' ? text : '';
  return serverText(text.en, text.zh);
}

/** The title of a step (its own, else the kind's name). */
export function stepTitle(step) {
  if (!step) return '';
  return bilingual(step.title) || (has(`flow.kind.${step.kind}`) ? t(`flow.kind.${step.kind}`) : step.id);
}

/** Why a flow stopped, in words. */
export function stopReason(reason) {
  return reason && has(`flow.reason.${reason}`) ? t(`flow.reason.${reason}`) : String(reason || '');
}

/** A time from the server (seconds since the epoch, or ISO text) as the local hh:mm:ss. */
export function clockOf(at) {
  if (at === null || at === undefined || at === '') return '';
  const date = typeof at === 'number' ? new Date(at * 1000) : new Date(at);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString([], { hour12: false });
}

/** The business outcome in one line: "Account 6217… (Type II)". */
/** An account number in groups of four digits, as on a bank card; other references as they are. */
export function groupedReference(reference) {
  const text = reference == null ? '' : String(reference);
  return /^\d{12,}$/.test(text) ? text.replace(/(\d{4})(?=\d)/g, '$1 ') : text;
}

export function outcomeText(outcome) {
  if (!outcome || typeof outcome !== 'object') return '';
  const type = has(`flow.outcome.${outcome.type}`) ? t(`flow.outcome.${outcome.type}`) : String(outcome.type || '');
  const parts = [`${type} ${groupedReference(outcome.reference)}`.trim()];
  if (outcome.class) parts.push(t('flow.accountClass', { cls: outcome.class }));
  const terms = outcome.terms;
  if (terms && typeof terms === 'object') {
    parts.push([terms.currency, terms.amount].filter((v) => v != null).join(' '));
    if (terms.term_months != null) parts.push(t('flow.months', { n: terms.term_months }));
    if (terms.annual_rate != null) parts.push(`${terms.annual_rate} %`);
  }
  if (outcome.product && typeof outcome.product === 'object') {
    parts.push([outcome.product.code, outcome.product.risk_level].filter(Boolean).join(' '));
  }
  if (outcome.amount != null && !terms) parts.push(String(outcome.amount));
  if (outcome.customer_risk_level) parts.push(t('flow.riskLevel', { level: outcome.customer_risk_level }));
  return parts.filter(Boolean).join(' · ');
}

// --- Markdown-lite -------------------------------------------------------------------

/** Append `text` to `parent`, with **bold** runs as <strong>. */
function appendInline(parent, text) {
  const parts = String(text).split('**');
  parts.forEach((part, i) => {
    if (!part) return;
    if (i % 2 === 1 && i < parts.length - 1) {
      const strong = document.createElement('strong');
      strong.textContent = part;
      parent.append(strong);
    } else {
      parent.append(document.createTextNode(i % 2 === 1 ? `**${part}` : part));
    }
  });
}

/**
 * Render a Markdown document into `container`: `#` headings, paragraphs (lines
 * joined), `-`/`*` and `1.` lists, `**bold**`, `---` rules. Anything else is text.
 */
export function renderMarkdown(container, markdown) {
  container.replaceChildren();
  const lines = String(markdown || '').replace(/\r\n?/g, '\n').split('\n');
  let paragraph = null;
  let list = null;
  const close = () => {
    paragraph = null;
    list = null;
  };
  for (const raw of lines) {
    const line = raw.trim();
    if (!line) {
      close();
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const bullet = /^[-*+]\s+(.*)$/.exec(line);
    const numbered = /^(\d{1,3})[.)]\s+(.*)$/.exec(line);
    if (heading) {
      close();
      // the document's own h1 sits under the page's headings
      const h = document.createElement(`h${Math.min(6, heading[1].length + 2)}`);
      appendInline(h, heading[2]);
      container.append(h);
    } else if (/^(-{3,}|\*{3,}|_{3,})$/.test(line)) {
      close();
      container.append(document.createElement('hr'));
    } else if (bullet || numbered) {
      const tag = bullet ? 'ul' : 'ol';
      if (!list || list.tagName.toLowerCase() !== tag) {
        paragraph = null;
        list = document.createElement(tag);
        if (numbered && numbered[1] !== '1') list.start = Number(numbered[1]);
        container.append(list);
      }
      const li = document.createElement('li');
      appendInline(li, bullet ? bullet[1] : numbered[2]);
      list.append(li);
    } else if (list && /^\s{2,}/.test(raw)) {
      // a continuation line of the last item
      appendInline(list.lastElementChild, ` ${line}`);
    } else {
      list = null;
      if (!paragraph) {
        paragraph = document.createElement('p');
        container.append(paragraph);
      } else {
        paragraph.append(document.createTextNode(/[\u3000-\u9fff]$/.test(paragraph.textContent) ? '' : ' '));
      }
      appendInline(paragraph, line);
    }
  }
}

/** Whether a scrollable box is scrolled to its end (or has nothing to scroll). */
export function scrolledToEnd(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight <= 4;
}

// --- signature pad ---------------------------------------------------------------------

/**
 * A handwriting pad on a <canvas> (pointer events: mouse, pen and touch alike).
 * `png()` gives the drawing as base64 PNG without the data: prefix, or null when
 * nothing was drawn.
 */
export class SignaturePad {
  constructor(canvas, { onChange = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.onChange = onChange;
    this.pointer = null;
    this.last = null;
    this.inked = 0;
    canvas.addEventListener('pointerdown', (e) => this.down(e));
    canvas.addEventListener('pointermove', (e) => this.move(e));
    for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) {
      canvas.addEventListener(type, (e) => this.up(e));
    }
    this.clear();
  }

  get empty() {
    return this.inked < 2;
  }

  point(event) {
    const rect = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / Math.max(1, rect.width)) * this.canvas.width,
      y: ((event.clientY - rect.top) / Math.max(1, rect.height)) * this.canvas.height,
    };
  }

  down(event) {
    if (this.pointer !== null || this.canvas.dataset.disabled === 'true') return;
    event.preventDefault();
    this.pointer = event.pointerId;
    try {
      this.canvas.setPointerCapture(event.pointerId);
    } catch {
      // a synthetic pointer cannot be captured: drawing still works inside the pad
    }
    this.last = this.point(event);
    this.dot(this.last);
  }

  move(event) {
    if (event.pointerId !== this.pointer || !this.last) return;
    event.preventDefault();
    const p = this.point(event);
    const { ctx } = this;
    ctx.beginPath();
    ctx.moveTo(this.last.x, this.last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    if (Math.hypot(p.x - this.last.x, p.y - this.last.y) > 0.5) this.inked += 1;
    this.last = p;
    if (this.inked === 2) this.onChange();
  }

  up(event) {
    if (event.pointerId !== this.pointer) return;
    this.pointer = null;
    this.last = null;
    this.onChange();
  }

  dot(p) {
    const { ctx } = this;
    ctx.beginPath();
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, Math.PI * 2);
    ctx.fill();
  }

  clear() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = '#0a1a3c';
    ctx.fillStyle = '#0a1a3c';
    ctx.lineWidth = 4;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    this.inked = 0;
    this.onChange();
  }

  /** The signature as base64 PNG (no data: prefix), shrunk if needed to fit the server's limit. */
  png() {
    if (this.empty) return null;
    let source = this.canvas;
    for (let scale = 1; scale >= 0.25; scale /= 2) {
      let canvas = source;
      if (scale < 1) {
        canvas = document.createElement('canvas');
        canvas.width = Math.round(source.width * scale);
        canvas.height = Math.round(source.height * scale);
        canvas.getContext('2d').drawImage(source, 0, 0, canvas.width, canvas.height);
      }
      const data = canvas.toDataURL('image/png').split(',', 2)[1] || '';
      if (data.length <= SIGNATURE_MAX_CHARS) return data;
      source = this.canvas;
    }
    return null;
  }
}
