// Camera, microphone and the peer connection to the server's media hub.
//
// One Call (one RTCPeerConnection) per call_started: audio and video sendrecv,
// the offer is sent only once ICE gathering is complete, because the server
// takes no trickled candidates. ICE servers always come from the server's
// call_started message.

export const MEDIA_CONSTRAINTS = Object.freeze({
  audio: true,
  video: { width: 640, height: 480 },
});

/** Why the camera or microphone could not be opened: a key under "device." in i18n. */
export class MediaAccessError extends Error {
  constructor(kind, cause) {
    super(`media access failed: ${kind}`);
    this.name = 'MediaAccessError';
    this.kind = kind;
    this.cause = cause;
  }
}

function classify(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'PermissionDeniedError':
    case 'SecurityError':
      return 'denied';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return 'missing';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'busy';
    default:
      return 'failed';
  }
}

/** getUserMedia with the counter's constraints; throws MediaAccessError. */
export async function openLocalMedia() {
  if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== 'function') {
    throw new MediaAccessError(window.isSecureContext ? 'missing' : 'insecure');
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia(MEDIA_CONSTRAINTS);
    if (stream.getVideoTracks().length === 0 || stream.getAudioTracks().length === 0) {
      stopStream(stream);
      throw new MediaAccessError('missing');
    }
    return stream;
  } catch (err) {
    if (err instanceof MediaAccessError) throw err;
    throw new MediaAccessError(classify(err), err);
  }
}

export function stopStream(stream) {
  if (!stream) return;
  for (const track of stream.getTracks()) track.stop();
}

/**
 * Play a video element; resolves false if the browser blocked playback
 * (autoplay policy), after calling onBlocked so the page can offer a "tap to play" button.
 */
export async function playVideo(video, onBlocked) {
  try {
    await video.play();
    return true;
  } catch (err) {
    if (err && err.name === 'NotAllowedError') {
      if (onBlocked) onBlocked();
      return false;
    }
    // AbortError: a new source replaced this one before it started; the next play() wins
    return false;
  }
}

export function showStream(video, stream, onBlocked) {
  if (video.srcObject !== stream) video.srcObject = stream;
  return playVideo(video, onBlocked);
}

/** Sets `enabled` on the stream's tracks of one kind; returns the new state. */
export function setTrackEnabled(stream, kind, enabled) {
  if (!stream) return false;
  const tracks = kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks();
  for (const track of tracks) track.enabled = enabled;
  return tracks.length > 0 && enabled;
}

let sharedAudioContext = null;

function audioContext() {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return null;
  if (!sharedAudioContext || sharedAudioContext.state === 'closed') sharedAudioContext = new Ctx();
  if (sharedAudioContext.state === 'suspended') {
    // created before any user gesture: start on the first one
    sharedAudioContext.resume().catch(() => {});
    const resume = () => {
      if (sharedAudioContext) sharedAudioContext.resume().catch(() => {});
    };
    document.addEventListener('pointerdown', resume, { once: true, capture: true });
    document.addEventListener('keydown', resume, { once: true, capture: true });
  }
  return sharedAudioContext;
}

/**
 * Microphone level meter: a WebAudio AnalyserNode sampled 10 times a second.
 * onLevel receives a value 0..1 (-60 dBFS .. 0 dBFS, with a short decay).
 */
export class MicMeter {
  constructor(stream, onLevel) {
    this.onLevel = onLevel;
    this.level = 0;
    this.timer = null;
    const track = stream && stream.getAudioTracks()[0];
    const ctx = track ? audioContext() : null;
    if (!ctx) {
      onLevel(0);
      return;
    }
    this.source = ctx.createMediaStreamSource(new MediaStream([track]));
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 1024;
    this.samples = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
    this.timer = setInterval(() => this.tick(), 100);
  }

  tick() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    const rms = Math.sqrt(sum / this.samples.length);
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    const instant = Math.min(1, Math.max(0, (db + 60) / 60));
    this.level = Math.max(instant, this.level * 0.7);
    this.onLevel(this.level < 0.01 ? 0 : this.level);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
    if (this.source) this.source.disconnect();
    this.source = null;
    this.onLevel(0);
  }
}

/**
 * The local camera + microphone with a preview element and a level meter.
 * `problem` is null or a MediaAccessError kind ('denied', 'missing', 'busy',
 * 'insecure', 'failed') or 'ended' (device unplugged); onChange runs after each change.
 * `ready` is a promise settled when the latest start() has finished (either way).
 */
export class LocalMedia {
  constructor({ video, onLevel, onChange }) {
    this.video = video;
    this.onLevel = onLevel;
    this.onChange = onChange || (() => {});
    this.stream = null;
    this.problem = null;
    this.starting = false;
    this.meter = null;
    this.enabled = { audio: true, video: true };
    this.ready = Promise.resolve();
  }

  start() {
    this.ready = this.open();
    return this.ready;
  }

  async open() {
    this.release();
    this.problem = null;
    this.starting = true;
    this.onChange();
    try {
      const stream = await openLocalMedia();
      this.stream = stream;
      setTrackEnabled(stream, 'audio', this.enabled.audio);
      setTrackEnabled(stream, 'video', this.enabled.video);
      for (const track of stream.getTracks()) {
        track.addEventListener('ended', () => {
          if (this.stream !== stream) return;
          this.problem = 'ended';
          this.onChange();
        });
      }
      this.video.srcObject = stream;
      playVideo(this.video);
      if (this.onLevel) this.meter = new MicMeter(stream, this.onLevel);
    } catch (err) {
      this.problem = err.kind || 'failed';
      console.info('camera/microphone unavailable:', this.problem);
    }
    this.starting = false;
    this.onChange();
  }

  /** Mute the microphone or turn the camera off (track.enabled); kept across restarts. */
  setEnabled(kind, enabled) {
    this.enabled[kind] = enabled;
    setTrackEnabled(this.stream, kind, enabled);
  }

  release() {
    if (this.meter) this.meter.stop();
    this.meter = null;
    stopStream(this.stream);
    this.stream = null;
    this.video.srcObject = null;
  }

  stop() {
    this.release();
    this.problem = null;
    this.onChange();
  }
}

/** A short two-tone chime (incoming customer on the agent page). */
export function chime() {
  const ctx = audioContext();
  if (!ctx || ctx.state !== 'running') return;
  const now = ctx.currentTime;
  for (const [i, freq] of [880, 1175].entries()) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, now + i * 0.18);
    gain.gain.exponentialRampToValueAtTime(0.2, now + i * 0.18 + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + i * 0.18 + 0.35);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now + i * 0.18);
    osc.stop(now + i * 0.18 + 0.4);
  }
}

/** The server's ice_servers entries as RTCIceServer dictionaries (no defaults added). */
function rtcIceServers(list) {
  if (!Array.isArray(list)) return [];
  return list
    .filter((s) => s && (typeof s.urls === 'string' || Array.isArray(s.urls)))
    .map((s) => {
      const server = { urls: s.urls };
      if (typeof s.username === 'string') server.username = s.username;
      if (typeof s.credential === 'string') server.credential = s.credential;
      return server;
    });
}

function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onState);
      pc.removeEventListener('icecandidate', onCandidate);
      resolve();
    };
    const onState = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const onCandidate = (event) => {
      if (!event.candidate) done();
    };
    // an unreachable STUN/TURN server can stall gathering: send what we have
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', onState);
    pc.addEventListener('icecandidate', onCandidate);
  });
}

/**
 * One call leg to the media hub: one RTCPeerConnection, closed with the call.
 *
 *   const call = new Call({iceServers, localStream, onRemoteStream, onConnectionState});
 *   const sdp = await call.createOffer();   // null if the call was closed meanwhile
 *   signaling.send({type: 'offer', sdp});
 *   ... on 'answer': await call.applyAnswer(msg.sdp);
 */
export class Call {
  constructor({ iceServers, localStream, onRemoteStream, onConnectionState }) {
    this.closed = false;
    this.remoteStream = new MediaStream();
    const config = { iceServers: rtcIceServers(iceServers) };
    try {
      this.pc = new RTCPeerConnection(config);
    } catch (err) {
      // a malformed ice_servers entry: host candidates still work on a LAN
      console.error('ice_servers rejected by the browser, using none', err);
      this.pc = new RTCPeerConnection({ iceServers: [] });
    }
    for (const kind of ['audio', 'video']) {
      const track = localStream ? localStream.getTracks().find((t) => t.kind === kind) : null;
      if (track) this.pc.addTransceiver(track, { direction: 'sendrecv', streams: [localStream] });
      else this.pc.addTransceiver(kind, { direction: 'sendrecv' });
    }
    this.pc.addEventListener('track', (event) => {
      if (this.closed) return;
      if (!this.remoteStream.getTracks().includes(event.track)) this.remoteStream.addTrack(event.track);
      if (onRemoteStream) onRemoteStream(this.remoteStream, event.track);
    });
    this.pc.addEventListener('connectionstatechange', () => {
      if (!this.closed && onConnectionState) onConnectionState(this.pc.connectionState);
    });
  }

  /** Create the offer and return its SDP once ICE gathering is complete. */
  async createOffer({ gatherTimeoutMs = 5000 } = {}) {
    const offer = await this.pc.createOffer();
    if (this.closed) return null;
    await this.pc.setLocalDescription(offer);
    await waitForIceGathering(this.pc, gatherTimeoutMs);
    if (this.closed) return null;
    return this.pc.localDescription.sdp;
  }

  async applyAnswer(sdp) {
    if (this.closed || this.pc.signalingState !== 'have-local-offer') return false;
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    return true;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.pc.close();
  }
}
