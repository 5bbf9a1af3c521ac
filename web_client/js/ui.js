// Small DOM helpers shared by both pages. Server-provided text only ever goes
// through textContent.

export function byTestId(id, root = document) {
  const el = root.querySelector(`[data-testid="${id}"]`);
  if (!el) throw new Error(`missing element data-testid=${id}`);
  return el;
}

export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing element #${id}`);
  return el;
}

export function setText(el, text) {
  el.textContent = text == null ? '' : String(text);
}

/** Show one of several sections (screens) and hide the others. */
export function showScreen(screens, name) {
  for (const [key, el] of Object.entries(screens)) el.hidden = key !== name;
  const heading = screens[name] && screens[name].querySelector('[data-focus]');
  if (heading && !heading.contains(document.activeElement)) heading.focus({ preventScroll: true });
}

/** Move an element (the one local-video) into a slot; the media keeps playing. */
export function moveInto(slot, el) {
  if (el.parentElement === slot) return;
  slot.appendChild(el);
  if (el instanceof HTMLMediaElement && el.srcObject && el.paused) el.play().catch(() => {});
}

/**
 * The error area: one element (data-testid="error-message") holding the latest
 * error, non-blocking, hidden again after a while or on "dismiss".
 */
export class ErrorArea {
  constructor(container, textEl, closeButton) {
    this.container = container;
    this.textEl = textEl;
    this.timer = null;
    closeButton.addEventListener('click', () => this.clear());
  }

  show(text, timeoutMs = 10000) {
    this.textEl.textContent = text;
    this.container.hidden = false;
    clearTimeout(this.timer);
    if (timeoutMs > 0) this.timer = setTimeout(() => this.clear(), timeoutMs);
  }

  clear() {
    clearTimeout(this.timer);
    this.container.hidden = true;
    this.textEl.textContent = '';
  }
}

/** A notice line (peer reconnecting, requeued...) that can disappear on its own. */
export class Notice {
  constructor(el) {
    this.el = el;
    this.timer = null;
    this.render = null;
  }

  /** `render` returns the text; it is called again on language change. */
  show(render, { timeoutMs = 0, tone = 'info' } = {}) {
    this.render = render;
    this.el.dataset.tone = tone;
    this.el.textContent = render();
    this.el.hidden = false;
    clearTimeout(this.timer);
    if (timeoutMs > 0) this.timer = setTimeout(() => this.hide(), timeoutMs);
  }

  refresh() {
    if (this.render && !this.el.hidden) this.el.textContent = this.render();
  }

  hide() {
    clearTimeout(this.timer);
    this.render = null;
    this.el.hidden = true;
    this.el.textContent = '';
  }
}

/** sessionStorage that never throws (private mode, disabled storage). */
export const store = {
  get(key) {
    try {
      const raw = sessionStorage.getItem(key);
      return raw === null ? null : JSON.parse(raw);
    } catch {
      return null;
    }
  },
  set(key, value) {
    try {
      sessionStorage.setItem(key, JSON.stringify(value));
    } catch {
      // not kept: a reload will start over
    }
  },
  remove(key) {
    try {
      sessionStorage.removeItem(key);
    } catch {
      // nothing to remove
    }
  },
};
