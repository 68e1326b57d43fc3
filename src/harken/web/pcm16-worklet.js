// The microphone's samples as 16-bit PCM at 24 kHz, mono: what /v1/realtime takes as
// `audio/pcm`. Runs on the audio thread; posts one ArrayBuffer per 100 ms to the page.
"use strict";

const TARGET_RATE = 24000;
const CHUNK = TARGET_RATE / 10;

class Pcm16Processor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // where the next output sample falls, in input samples
    this.last = 0; // the previous block's last sample, for interpolating across blocks
    this.out = new Int16Array(CHUNK);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    // Linear interpolation when the context does not run at 24 kHz (the browser refused it);
    // a plain copy when it does (step 1).
    while (this.position < channel.length) {
      const index = Math.floor(this.position);
      const fraction = this.position - index;
      const before = index === 0 ? this.last : channel[index - 1];
      const sample = before + (channel[index] - before) * fraction;
      const clamped = Math.max(-1, Math.min(1, sample));
      this.out[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
      if (this.filled === CHUNK) {
        this.port.postMessage(this.out.buffer, [this.out.buffer]);
        this.out = new Int16Array(CHUNK);
        this.filled = 0;
      }
      this.position += this.step;
    }
    this.position -= channel.length;
    this.last = channel[channel.length - 1];
    return true;
  }
}

registerProcessor("pcm16", Pcm16Processor);
