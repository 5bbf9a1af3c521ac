// The signaling WebSocket: JSON frames, event callbacks, keepalive and reconnection.
//
// One Signaling object per page session. It connects to the same host as the
// page (wss: under https, ws: otherwise). When the socket drops unexpectedly and
// the page's shouldReconnect() says so, it reconnects with backoff (0.5, 1, 2, 4,
// 5, 5 ... s) until the reconnect window is used up; the page re-identifies
// itself (rejoin / auth) in its 'open' handler. A fatal server error or a policy
// close code ends the connection for good.
//
// Events (sig.on(name, fn)):
//   open         {reconnected}         the socket is open (again)
//   message      msg                   one parsed server frame
//   reconnecting {attempt, delayMs}    dropped; next attempt in delayMs
//   closed       {code, reason, fatal, opened}  closed for good, no reconnection
//   giveup       {}                    the reconnect window ran out

const BACKOFF_MS = [500, 1000, 2000, 4000, 5000];
/** Close codes after which reconnecting cannot help (policy, too big, unauthenticated, replaced). */
const FINAL_CLOSE_CODES = new Set([1008, 1009, 4401, 4409]);
/** Synthetic close code for a socket we dropped because the server stopped answering. */
const CLOSE_STALE = 4000;

export function wsUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

export class Signaling {
  /**
   * @param {string} path  '/ws/customer' or '/ws/agent'
   * @param {object} options
   * @param {() => boolean} [options.shouldReconnect]  asked on every unexpected close
   * @param {number} [options.reconnectWindowMs]  give up after this long without a connection
   * @param {number} [options.keepaliveMs]  ping interval; a silent socket is dropped after 2.5 intervals
   */
  constructor(path, { shouldReconnect = () => true, reconnectWindowMs = 30000, keepaliveMs = 10000 } = {}) {
    this.path = path;
    this.shouldReconnect = shouldReconnect;
    this.reconnectWindowMs = reconnectWindowMs;
    this.keepaliveMs = keepaliveMs;
    this.ws = null;
    this.handlers = new Map();
    this.wanted = false;
    this.fatal = false;
    this.everOpened = false;
    this.attempt = 0;
    this.dropStartedAt = null;
    this.retryTimer = null;
    this.keepaliveTimer = null;
    this.lastReceivedAt = 0;
    this.onOnline = () => {
      if (this.retryTimer !== null) {
        clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this.openSocket();
      }
    };
  }

  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, []);
    this.handlers.get(event).push(fn);
    return this;
  }

  emit(event, payload) {
    for (const fn of this.handlers.get(event) ?? []) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`signaling ${event} handler failed`, err);
      }
    }
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  get isReconnecting() {
    return this.dropStartedAt !== null;
  }

  connect() {
    this.wanted = true;
    this.fatal = false;
    window.addEventListener('online', this.onOnline);
    this.openSocket();
  }

  setReconnectWindow(ms) {
    if (Number.isFinite(ms) && ms > 0) this.reconnectWindowMs = ms;
  }

  /** Send one message; false when the socket is not open (the caller decides what to do). */
  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Close on purpose: no 'closed' event, no reconnection. */
  close() {
    this.wanted = false;
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.stopKeepalive();
    this.dropStartedAt = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000, 'bye');
    }
  }

  /** Reconnect at once (e.g. a "reconnect" button after giving up). */
  reconnectNow() {
    this.close();
    this.everOpened = true;
    this.connect();
  }

  openSocket() {
    this.retryTimer = null;
    let ws;
    try {
      ws = new WebSocket(wsUrl(this.path));
    } catch (err) {
      console.error('cannot open the signaling socket', err);
      this.handleClose({ code: 1006, reason: '' });
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      const reconnected = this.everOpened;
      this.everOpened = true;
      this.attempt = 0;
      this.dropStartedAt = null;
      this.startKeepalive();
      this.emit('open', { reconnected });
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastReceivedAt = Date.now();
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        console.warn('ignoring a frame that is not JSON');
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      if (msg.type === 'error' && msg.fatal) this.fatal = true;
      if (msg.type === 'pong') return;
      this.emit('message', msg);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.handleClose(event);
    };
    ws.onerror = () => {
      // a close event always follows; nothing to do here
    };
  }

  handleClose({ code, reason }) {
    const opened = this.everOpened;
    this.stopKeepalive();
    if (this.ws) detach(this.ws);
    this.ws = null;
    if (!this.wanted) return;
    const final = this.fatal || FINAL_CLOSE_CODES.has(code);
    if (final || !this.shouldReconnect()) {
      this.wanted = false;
      this.dropStartedAt = null;
      window.removeEventListener('online', this.onOnline);
      this.emit('closed', { code, reason, fatal: final, opened });
      return;
    }
    const now = Date.now();
    if (this.dropStartedAt === null) this.dropStartedAt = now;
    const delayMs = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    if (now + delayMs - this.dropStartedAt > this.reconnectWindowMs) {
      this.wanted = false;
      this.dropStartedAt = null;
      window.removeEventListener('online', this.onOnline);
      this.emit('giveup', {});
      return;
    }
    this.attempt += 1;
    this.emit('reconnecting', { attempt: this.attempt, delayMs });
    this.retryTimer = setTimeout(() => this.openSocket(), delayMs);
  }

  startKeepalive() {
    this.stopKeepalive();
    this.lastReceivedAt = Date.now();
    this.keepaliveTimer = setInterval(() => {
      if (!this.isOpen) return;
      if (Date.now() - this.lastReceivedAt > this.keepaliveMs * 2.5) {
        // the server stopped answering (sleeping laptop, dead Wi-Fi): don't wait for TCP
        const ws = this.ws;
        detach(ws);
        ws.close();
        this.handleClose({ code: CLOSE_STALE, reason: 'stale' });
        return;
      }
      this.send({ type: 'ping' });
    }, this.keepaliveMs);
  }

  stopKeepalive() {
    clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
  }
}

function detach(ws) {
  ws.onopen = null;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = null;
}
