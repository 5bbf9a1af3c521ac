// The media side of a call, the same on the customer and the agent page.
//
// A CallController owns the call view both pages share (remote-video,
// play-button, #media-status, mute-button/#mute-label, camera-button/
// #camera-label, local-video): one media Call (RTCPeerConnection) at a time and
// its offer and answer, new offers after bad_sdp or lost media, the
// keyframe request when a connection shows no picture, the call clock, and the
// mute and camera buttons. The page keeps its own state machine and signaling:
// it calls begin() and startMedia() on call_started, onAnswer() on answer,
// retryAfterBadSdp() on a bad_sdp error, onMediaMessage() on media_lost,
// media_restored and media_restart, and closePeer() or close() when the call
// goes.
//
// Lost media: when the server asks (media_restart) or our own connection
// fails, a new peer connection and offer replace the current one (at most one
// per RESTART_MIN_INTERVAL_MS; the server asks again while media stays lost).
// While either party's media is lost, data-testid="media-lost-banner" says so.
//
// Both pages also show their state the same machine-readable way (tests read
// it): data-testid="call-state" and window.vcounter.state, see publishState();
// window.vcounter.pc is the current RTCPeerConnection; window.vcounter.mediaRestarts
// counts the media restarts of the page.

import { formatClock, t } from './i18n.js';
import { Call, playVideo, showStream } from './media.js';
import { Notice, byId, byTestId, setText } from './ui.js';

/** New offers sent for one call after bad_sdp (a failed connection: see restartMedia). */
const MAX_RENEGOTIATIONS = 2;
/** Connected this long without a picture: ask the other side's encoder for a keyframe. */
const KEYFRAME_WAIT_MS = 3000;
/** At most one media restart (media_restart, or our connection failed) per this long. */
const RESTART_MIN_INTERVAL_MS = 3000;

window.vcounter = { pc: null, state: 'idle', mediaRestarts: 0 };

/** Show the page's state: data-testid="call-state", window.vcounter, the status pill and <body>. */
export function publishState(state) {
  window.vcounter.state = state;
  byTestId('call-state').textContent = state;
  byId('status-pill').dataset.state = state;
  document.body.dataset.state = state;
}

export class CallController {
  /**
   * @param {object} options
   * @param {'customer'|'agent'} options.role  whose page this is
   * @param {LocalMedia} options.devices  the local camera and microphone
   * @param {ErrorArea} options.errors  where an answer that cannot be applied is reported
   * @param {(msg: object) => boolean} options.send  a signaling frame; false if it was not sent
   * @param {() => boolean} options.isActive  the page is in its 'active' state
   * @param {() => boolean} options.isConnected  the signaling socket is open
   * @param {() => void} options.onTick  once a second while the clock runs (render clockText())
   * @param {() => void} [options.onOfferNotSent]  the offer could not be sent (socket down)
   */
  constructor({ role, devices, errors, send, isActive, isConnected, onTick, onOfferNotSent }) {
    this.role = role;
    this.devices = devices;
    this.errors = errors;
    this.send = send;
    this.isActive = isActive;
    this.isConnected = isConnected;
    this.onTick = onTick;
    this.onOfferNotSent = onOfferNotSent || (() => {});
    this.el = {
      remoteVideo: byTestId('remote-video'),
      playButton: byTestId('play-button'),
      localVideo: byTestId('local-video'),
      mute: byTestId('mute-button'),
      muteLabel: byId('mute-label'),
      camera: byTestId('camera-button'),
      cameraLabel: byId('camera-label'),
    };
    this.mediaStatus = new Notice(byId('media-status'));
    this.mediaBanner = byTestId('media-lost-banner');
    this.mediaBannerText = byId('media-lost-text');
    /** role -> {source: 'server'|'local', windowS}: whose media is lost now */
    this.mediaLost = new Map();
    this.lastRestartAt = 0;
    /** the current media Call, or null */
    this.call = null;
    this.iceServers = [];
    this.renegotiations = 0;
    this.keyframeTimer = null;
    this.startedAt = null;
    this.clockTimer = null;
    this.muted = false;
    this.cameraOff = false;

    this.el.mute.addEventListener('click', () => this.toggleMute());
    this.el.camera.addEventListener('click', () => this.toggleCamera());
    this.el.playButton.addEventListener('click', async () => {
      if (await playVideo(this.el.remoteVideo)) this.el.playButton.hidden = true;
    });
  }

  /**
   * call_started: take its ICE servers, allow new renegotiations, run the clock
   * (started now unless it already runs for this call, or restartClock).
   */
  begin(msg, { restartClock = false } = {}) {
    this.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
    this.renegotiations = 0;
    this.clearMediaLost();
    if (restartClock || !this.startedAt) this.startedAt = Date.now();
    clearInterval(this.clockTimer);
    this.clockTimer = setInterval(this.onTick, 1000);
    this.onTick();
  }

  /** The call's duration as m:ss, or '' without a call. */
  clockText() {
    return this.startedAt ? formatClock((Date.now() - this.startedAt) / 1000) : '';
  }

  /** A new RTCPeerConnection and offer (each call_started, or to retry). */
  async startMedia() {
    this.closePeer();
    await this.devices.ready;
    if (!this.isActive() || this.call !== null) return;
    const call = new Call({
      iceServers: this.iceServers,
      localStream: this.devices.stream,
      onRemoteStream: (stream) => {
        if (this.call !== call) return;
        this.el.playButton.hidden = true;
        showStream(this.el.remoteVideo, stream, () => {
          this.el.playButton.hidden = false;
        });
      },
      onConnectionState: (state) => this.onMediaState(call, state),
    });
    this.call = call;
    window.vcounter.pc = call.pc;
    this.mediaStatus.show(() => t('call.connecting'));
    try {
      const sdp = await call.createOffer();
      if (sdp === null || this.call !== call) return;
      if (!this.send({ type: 'offer', sdp })) this.onOfferNotSent();
    } catch (err) {
      console.error('could not create the offer', err);
      if (this.call === call) this.mediaStatus.show(() => t('call.mediaFailed'), { tone: 'error' });
    }
  }

  async onAnswer(msg) {
    const call = this.call;
    if (!call) return;
    try {
      await call.applyAnswer(msg.sdp);
    } catch (err) {
      console.error('could not apply the answer', err);
      if (this.call === call) this.errors.show(t('error.bad_sdp'));
    }
  }

  /** The server rejected our offer: send a new one if this call has retries left. */
  retryAfterBadSdp() {
    if (!this.call || this.renegotiations >= MAX_RENEGOTIATIONS) return false;
    this.renegotiations += 1;
    this.startMedia();
    return true;
  }

  /** media_lost, media_restored or media_restart from the server. */
  onMediaMessage(msg) {
    if (msg.type === 'media_lost') {
      this.mediaLost.set(msg.role, { source: 'server', windowS: Number(msg.window_s) || 0 });
    } else if (msg.type === 'media_restored') {
      this.mediaLost.delete(msg.role);
    } else if (msg.type === 'media_restart') {
      this.mediaLost.set(this.role, { source: 'server', windowS: 0 });
      this.restartMedia('media_restart');
    }
    this.renderMediaLost();
  }

  /** Forget a party's lost media (it dropped: the page's reconnect notice takes over), or everyone's. */
  clearMediaLost(role = null) {
    if (role === null) this.mediaLost.clear();
    else this.mediaLost.delete(role);
    this.renderMediaLost();
  }

  renderMediaLost() {
    const own = this.mediaLost.has(this.role);
    const other = [...this.mediaLost.entries()].find(([role]) => role !== this.role);
    let text = null;
    if (own) text = t('banner.mediaReconnecting');
    else if (other && other[0] === 'agent') text = t('banner.mediaLostAgent');
    else if (other) text = t('banner.mediaLostCustomer', { n: other[1].windowS });
    if (text !== null) setText(this.mediaBannerText, text);
    this.mediaBanner.hidden = text === null;
  }

  /** A new peer connection and offer during the call; false if not now (see RESTART_MIN_INTERVAL_MS). */
  restartMedia(reason) {
    const now = Date.now();
    if (!this.isActive() || !this.isConnected() || now - this.lastRestartAt < RESTART_MIN_INTERVAL_MS) {
      return false;
    }
    this.lastRestartAt = now;
    window.vcounter.mediaRestarts += 1;
    console.info(`restarting media (${reason})`);
    this.startMedia();
    return true;
  }

  onMediaState(call, state) {
    if (this.call !== call) return;
    if (state === 'connected') {
      this.mediaStatus.hide();
      if (this.mediaLost.get(this.role)?.source === 'local') this.clearMediaLost(this.role);
      clearTimeout(this.keyframeTimer);
      this.keyframeTimer = setTimeout(() => {
        // connected but no picture yet: ask the other side's encoder for a keyframe
        if (this.call === call && this.el.remoteVideo.videoWidth === 0) {
          this.send({ type: 'request_keyframe' });
        }
      }, KEYFRAME_WAIT_MS);
    } else if (state === 'disconnected') {
      this.mediaStatus.show(() => t('call.mediaUnstable'), { tone: 'warn' });
    } else if (state === 'failed') {
      // our side noticed first; if no restart is allowed now, the server asks again (media_restart)
      if (!this.mediaLost.has(this.role)) this.mediaLost.set(this.role, { source: 'local', windowS: 0 });
      this.renderMediaLost();
      this.restartMedia('failed');
    }
  }

  /** Close the peer connection only (hanging up, or before a new offer). */
  closePeer() {
    clearTimeout(this.keyframeTimer);
    if (this.call) this.call.close();
    this.call = null;
    window.vcounter.pc = null;
  }

  /** The call is over: peer connection, media status, clock and remote video. */
  close() {
    this.closePeer();
    this.clearMediaLost();
    this.mediaStatus.hide();
    clearInterval(this.clockTimer);
    this.clockTimer = null;
    this.startedAt = null;
    this.el.remoteVideo.srcObject = null;
    this.el.playButton.hidden = true;
  }

  toggleMute() {
    this.muted = !this.muted;
    this.devices.setEnabled('audio', !this.muted);
    this.renderControls();
  }

  toggleCamera() {
    this.cameraOff = !this.cameraOff;
    this.devices.setEnabled('video', !this.cameraOff);
    this.el.localVideo.classList.toggle('camera-off', this.cameraOff);
    this.renderControls();
  }

  renderControls() {
    const { mute, muteLabel, camera, cameraLabel } = this.el;
    mute.setAttribute('aria-pressed', String(this.muted));
    setText(muteLabel, t(this.muted ? 'call.unmute' : 'call.mute'));
    camera.setAttribute('aria-pressed', String(this.cameraOff));
    setText(cameraLabel, t(this.cameraOff ? 'call.cameraOn' : 'call.cameraOff'));
  }

  /** Language change: the button labels and the media status line. */
  refresh() {
    this.renderControls();
    this.mediaStatus.refresh();
    this.renderMediaLost();
  }
}
