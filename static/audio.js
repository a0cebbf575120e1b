// huizhen clinic pages: generated sounds (speaker test tone, ring pattern) and the microphone
// level meter, all with WebAudio. No audio files, no external URLs.

let ctx = null;

/** The page's AudioContext (created on first use; browsers may start it suspended). */
export function audioContext() {
  if (!ctx) {
    const Ctor = window.AudioContext || window.webkitAudioContext;
    if (!Ctor) return null;
    ctx = new Ctor();
  }
  return ctx;
}

/** Resume audio after a user gesture (autoplay policies start contexts suspended). */
export function unlockAudio() {
  const c = audioContext();
  if (c && c.state === 'suspended') c.resume().catch(() => {});
}

// Any click or key press counts as the gesture that lets sound play.
for (const type of ['pointerdown', 'keydown']) {
  window.addEventListener(type, unlockAudio, { capture: true, passive: true });
}

/** Schedule one beep: `freqs` mixed, from `start` (context time) for `duration` seconds. */
function beep(c, freqs, start, duration, volume) {
  const gain = c.createGain();
  gain.gain.setValueAtTime(0, start);
  gain.gain.linearRampToValueAtTime(volume, start + 0.02);
  gain.gain.setValueAtTime(volume, start + duration - 0.04);
  gain.gain.linearRampToValueAtTime(0, start + duration);
  gain.connect(c.destination);
  for (const f of freqs) {
    const osc = c.createOscillator();
    osc.type = 'sine';
    osc.frequency.value = f;
    osc.connect(gain);
    osc.start(start);
    osc.stop(start + duration + 0.02);
  }
}

/** Play a short test tone (two rising notes). Returns false when audio is unavailable. */
export function playTestTone() {
  const c = audioContext();
  if (!c) return false;
  unlockAudio();
  const now = c.currentTime + 0.05;
  beep(c, [523.25], now, 0.35, 0.25);
  beep(c, [783.99], now + 0.4, 0.5, 0.25);
  return true;
}

/**
 * Ring like a telephone (two 0.4 s bursts of 440+480 Hz, then a pause) until the returned
 * function is called.
 */
export function startRinging() {
  const c = audioContext();
  if (!c) return () => {};
  const ring = () => {
    const now = c.currentTime + 0.05;
    beep(c, [440, 480], now, 0.4, 0.2);
    beep(c, [440, 480], now + 0.6, 0.4, 0.2);
  };
  ring();
  const timer = setInterval(ring, 3000);
  return () => clearInterval(timer);
}

/**
 * Show the level of `stream`'s microphone in `bar` (its width, 0-100 %). Calls `onLevel(level)`
 * with 0..1 on every frame. Returns a function that stops the meter.
 */
export function startLevelMeter(stream, bar, onLevel = () => {}) {
  const c = audioContext();
  if (!c || !stream || !stream.getAudioTracks().length) return () => {};
  const source = c.createMediaStreamSource(stream);
  const analyser = c.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  let running = true;
  const tick = () => {
    if (!running) return;
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    const rms = Math.sqrt(sum / data.length);
    // Speech sits around 0.02-0.2 RMS; scale so normal speech fills most of the bar.
    const level = Math.min(1, rms * 5);
    if (bar) bar.style.width = `${Math.round(level * 100)}%`;
    onLevel(level);
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  return () => {
    running = false;
    try {
      source.disconnect();
    } catch {
      // already disconnected
    }
    if (bar) bar.style.width = '0%';
  };
}
