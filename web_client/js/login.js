// Signing in on the staff pages (agent and auditor workbench).
//
// A Login owns the sign-in form both pages share (#login-form, login-username,
// login-password, login-error, login-submit) and the bearer token, which is
// kept in sessionStorage so that a reload stays signed in. A user whose role
// the page does not take is signed out again at once, with wrongRoleKey shown.

import { t } from './i18n.js';
import { byId, byTestId, setText, store } from './ui.js';

/** GET /api/me with the stored token; the user, or throws. */
async function defaultFetchMe(login) {
  const response = await fetch('/api/me', { headers: login.authHeaders(), credentials: 'same-origin' });
  if (!response.ok) throw new Error(`status ${response.status}`);
  return response.json();
}

export class Login {
  /**
   * @param {object} options
   * @param {string} options.tokenKey  the sessionStorage key of the token
   * @param {string[]} options.roles  the roles this page takes
   * @param {string} options.wrongRoleKey  i18n key shown to a user with another role
   * @param {(user: object) => void} options.onSignedIn  with /api/login's or /api/me's answer
   * @param {(login: Login) => Promise<object>} [options.fetchMe]  GET /api/me (the page's API helper)
   */
  constructor({ tokenKey, roles, wrongRoleKey, onSignedIn, fetchMe = defaultFetchMe }) {
    this.tokenKey = tokenKey;
    this.roles = roles;
    this.wrongRoleKey = wrongRoleKey;
    this.onSignedIn = onSignedIn;
    this.fetchMe = fetchMe;
    this.el = {
      form: byId('login-form'),
      username: byTestId('login-username'),
      password: byTestId('login-password'),
      error: byTestId('login-error'),
      submit: byTestId('login-submit'),
    };
    this.token = null;
    /** i18n key of the message under the form, or null */
    this.errorKey = null;
    this.el.form.addEventListener('submit', (event) => this.submit(event));
  }

  authHeaders(extra = {}) {
    const headers = { Accept: 'application/json', ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  renderError() {
    this.el.error.hidden = !this.errorKey;
    setText(this.el.error, this.errorKey ? t(this.errorKey) : '');
  }

  /** Show a message under the form (null: none). */
  setError(errorKey) {
    this.errorKey = errorKey;
    this.renderError();
  }

  async submit(event) {
    event.preventDefault();
    const { username: usernameInput, password: passwordInput, submit } = this.el;
    const username = usernameInput.value.trim();
    const password = passwordInput.value;
    if (!username) {
      usernameInput.focus();
      return;
    }
    if (!password) {
      passwordInput.focus();
      return;
    }
    this.setError(null);
    submit.disabled = true;
    setText(submit, t('agent.loggingIn'));
    try {
      const response = await fetch('/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ username, password }),
        credentials: 'same-origin',
      });
      const body = await response.json().catch(() => ({}));
      if (response.status === 401) {
        this.errorKey = 'agent.badCredentials';
      } else if (response.status === 429) {
        this.errorKey = 'agent.tooMany';
      } else if (!response.ok || typeof body.token !== 'string') {
        this.errorKey = 'agent.loginFailed';
      } else if (!this.roles.includes(body.role)) {
        this.token = body.token;
        await this.revoke();
        this.errorKey = this.wrongRoleKey;
      } else {
        this.token = body.token;
        store.set(this.tokenKey, body.token);
        passwordInput.value = '';
        this.onSignedIn(body);
      }
    } catch (err) {
      console.warn('login request failed', err);
      this.errorKey = 'error.unreachable';
    } finally {
      submit.disabled = false;
      setText(submit, t('agent.login'));
      this.renderError();
    }
  }

  /** Drop the token here at once, and ask the server to revoke it. */
  async revoke() {
    const headers = this.authHeaders();
    this.forget();
    try {
      await fetch('/api/logout', { method: 'POST', headers, credentials: 'same-origin' });
    } catch {
      // the token expires on its own
    }
  }

  /** Drop the token here (the server no longer takes it). */
  forget() {
    this.token = null;
    store.remove(this.tokenKey);
  }

  /** A token left in sessionStorage (reload): still valid, and still of a role this page takes? */
  async resume() {
    const token = store.get(this.tokenKey);
    if (typeof token !== 'string' || !token) return;
    this.token = token;
    try {
      const user = await this.fetchMe(this);
      if (!this.roles.includes(user.role)) throw new Error(`role ${user.role} not taken here`);
      this.onSignedIn(user);
    } catch (err) {
      console.info('stored login not usable:', err.message);
      this.forget();
    }
  }
}
