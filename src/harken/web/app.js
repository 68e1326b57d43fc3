// harken's web page: plain JS, no build step. It talks to the same API as any other client:
// GET /v1/models; POST /v1/audio/transcriptions or /translations, streamed as verbose_json so
// that one pass gives the text, the segments' times (progress, subtitles) and the language;
// and the Realtime API on /v1/realtime for live text from the microphone. The API key, when the
// server needs one, stays in sessionStorage.
"use strict";

const KEY_STORAGE = "harken-api-key";
// Whisper's languages; their names come from the browser (Intl.DisplayNames).
const LANGUAGES = ("af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo " +
  "fr gl gu ha haw he hi hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk " +
  "ml mn mr ms mt my ne nl nn no oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te " +
  "tg th tk tl tr tt uk ur uz vi yi yo yue zh").split(" ");

const $ = (id) => document.getElementById(id);
const ui = {
  keyForm: $("key-form"), keyInput: $("api-key"), keyHelp: $("key-help"),
  form: $("transcribe-form"), file: $("file"), dropZone: $("drop-zone"), record: $("record"),
  audioInfo: $("audio-info"), preview: $("preview"), model: $("model"), language: $("language"),
  translate: $("task-translate"), transcribe: $("transcribe"), cancel: $("cancel"),
  progressBox: $("progress-box"), progress: $("progress"), progressText: $("progress-text"),
  status: $("status"), languageInfo: $("language-info"), transcript: $("transcript"),
  segments: $("segments"), copy: $("copy"), srt: $("download-srt"), vtt: $("download-vtt"),
  liveToggle: $("live-toggle"),
  liveStatus: $("live-status"), liveTranscript: $("live-transcript"),
};

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  audio: null,          // {blob, name, duration}: duration in seconds when the browser knows it
  models: new Map(),    // id -> the languages it knows, or null when the server does not say
  modelsLoaded: false,
  busy: false,
  controller: null,
  recorder: null,
  segments: [],         // {start, end, text} of the last result, as the server timed them
  lastText: "",
  live: null,           // the live session while one is open
};

// ---------------------------------------------------------------- helpers
function headers() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

function setStatus(message, isError = false) {
  ui.status.textContent = message;
  ui.status.classList.toggle("error", isError);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `The server answered ${response.status} ${response.statusText}.`;
}

function baseName() {
  const name = state.audio ? state.audio.name : "transcript";
  return name.replace(/\.[^.]+$/, "") || "transcript";
}

function formatSeconds(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

function task() {
  return ui.form.elements.task.value;
}

function refreshButtons() {
  const ready = state.modelsLoaded && state.audio && !state.busy;
  ui.transcribe.disabled = !ready;
  ui.transcribe.textContent = task() === "translate" ? "Translate" : "Transcribe";
  ui.cancel.hidden = !state.busy;
  const done = !state.busy && state.lastText.length > 0;
  ui.copy.disabled = !done;
  ui.srt.disabled = !done || state.segments.length === 0;
  ui.vtt.disabled = ui.srt.disabled;
  ui.liveToggle.disabled = !state.modelsLoaded;
}

// ---------------------------------------------------------------- the API key
function askForKey(message) {
  ui.keyHelp.textContent = message;
  ui.keyForm.hidden = false;
  ui.keyInput.focus();
}

ui.keyForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = ui.keyInput.value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  await loadModels();
});

// ---------------------------------------------------------------- models and languages
let languageNames = null;
try { languageNames = new Intl.DisplayNames(["en"], { type: "language" }); } catch (_) { /* old */ }

function languageLabel(code) {
  try { return (languageNames && languageNames.of(code)) || code; } catch (_) { return code; }
}

// The languages `model` knows (from /v1/models), or all of Whisper's when the server does not
// say (a model not loaded yet); "Detect automatically" only where there is a choice.
function fillLanguages(select, model) {
  const previous = select.value;
  const codes = state.models.get(model) || LANGUAGES;
  const options = codes.map((code) => [code, languageLabel(code)])
    .sort((a, b) => a[1].localeCompare(b[1]));
  select.replaceChildren();
  if (codes.length > 1) select.append(new Option("Detect automatically", "auto"));
  for (const [code, label] of options) select.append(new Option(`${label} (${code})`, code));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

// An English-only model can neither translate nor be told another language.
function modelChanged() {
  fillLanguages(ui.language, ui.model.value);
  const codes = state.models.get(ui.model.value);
  ui.translate.disabled = Boolean(codes) && codes.length < 2;
  if (ui.translate.disabled && ui.translate.checked) ui.form.elements.task.value = "transcribe";
  ui.language.disabled = task() === "translate";  // Whisper detects what it translates
  refreshButtons();
}

async function loadModels() {
  setStatus("Connecting to the server…");
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (err) {
    setStatus(`The server cannot be reached: ${err.message}`, true);
    return;
  }
  if (response.status === 401) {
    state.modelsLoaded = false;
    refreshButtons();
    setStatus("");
    askForKey(state.key
      ? "That API key was not accepted. Enter a valid key."
      : "This server needs an API key. It is kept in this browser tab only.");
    return;
  }
  if (!response.ok) {
    setStatus(await errorMessage(response), true);
    return;
  }
  const body = await response.json();
  state.models = new Map(body.data.map((m) => [m.id, Array.isArray(m.languages) ? m.languages : null]));
  const previous = ui.model.value;
  ui.model.replaceChildren();
  for (const model of body.data) ui.model.append(new Option(model.id, model.id));
  if (previous && state.models.has(previous)) ui.model.value = previous;
  modelChanged();
  ui.keyForm.hidden = true;
  state.modelsLoaded = true;
  setStatus(state.audio ? "Ready." : "Choose a file or record to begin.");
  refreshButtons();
}

// ---------------------------------------------------------------- choosing audio
function useAudio(blob, name, duration = null) {
  state.audio = { blob, name, duration };
  if (ui.preview.src) URL.revokeObjectURL(ui.preview.src);
  ui.preview.src = URL.createObjectURL(blob);
  ui.preview.hidden = false;
  const kb = Math.max(1, Math.round(blob.size / 1024));
  ui.audioInfo.textContent = `Selected: ${name} (${kb} kB).`;
  if (state.modelsLoaded) setStatus("Ready.");
  refreshButtons();
}

// The length of a file, for the progress bar; a recording's is known from its clock, since
// MediaRecorder's webm has none in its header.
ui.preview.addEventListener("loadedmetadata", () => {
  if (state.audio && !state.audio.duration && Number.isFinite(ui.preview.duration)) {
    state.audio.duration = ui.preview.duration;
  }
});

ui.file.addEventListener("change", () => {
  const file = ui.file.files[0];
  if (file) useAudio(file, file.name);
});

ui.dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  ui.dropZone.classList.add("over");
});
ui.dropZone.addEventListener("dragleave", () => ui.dropZone.classList.remove("over"));
ui.dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  ui.dropZone.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) useAudio(file, file.name);
});

ui.record.addEventListener("click", async () => {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("Recording needs a browser with MediaRecorder, on https:// or localhost.", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus(`The microphone is not available: ${err.message}`, true);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  const started = Date.now();
  const timer = setInterval(() => {
    setStatus(`Recording… ${formatSeconds((Date.now() - started) / 1000)}`);
  }, 500);
  recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
  recorder.addEventListener("stop", () => {
    clearInterval(timer);
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    ui.record.setAttribute("aria-pressed", "false");
    ui.record.textContent = "Record from the microphone";
    const type = recorder.mimeType || "audio/webm";
    const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    useAudio(new Blob(chunks, { type }), `recording.${extension}`, (Date.now() - started) / 1000);
  });
  state.recorder = recorder;
  recorder.start(250);
  ui.record.setAttribute("aria-pressed", "true");
  ui.record.textContent = "Stop recording";
  setStatus("Recording… 0:00");
});

// ---------------------------------------------------------------- transcribing
function formData() {
  const data = new FormData();
  data.append("file", state.audio.blob, state.audio.name);
  data.append("model", ui.model.value);
  if (task() === "transcribe" && ui.language.value !== "auto") {
    data.append("language", ui.language.value);
  }
  // verbose_json streams each segment's times after its text, and the language at the end.
  data.append("response_format", "verbose_json");
  data.append("stream", "true");
  return data;
}

function showProgress(seconds, done = false) {
  const duration = state.audio.duration;
  ui.progressBox.hidden = false;
  if (done) {
    ui.progress.value = 1;
  } else if (duration) {
    ui.progress.value = Math.min(1, seconds / duration);
  } else {
    ui.progress.removeAttribute("value");  // indeterminate: the length is not known yet
  }
  ui.progressText.textContent = duration
    ? `${formatSeconds(Math.min(seconds, duration))} of ${formatSeconds(duration)}`
    : `${formatSeconds(seconds)} recognised`;
}

function formatTime(s) {
  const m = Math.floor(s / 60);
  return `${m}:${(s % 60).toFixed(1).padStart(4, "0")}`;
}

function addSegment(segment) {
  state.segments.push(segment);
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "segment";
  button.dataset.start = String(segment.start);
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${formatTime(segment.start)}–${formatTime(segment.end)}`;
  button.append(time, document.createTextNode(` ${segment.text}`));
  button.setAttribute("aria-label", `Play from ${formatTime(segment.start)}: ${segment.text}`);
  item.append(button);
  ui.segments.append(item);
}

ui.segments.addEventListener("click", (event) => {
  const button = event.target.closest("button.segment");
  if (!button) return;
  ui.preview.currentTime = Number(button.dataset.start);
  ui.preview.play().catch(() => setStatus("The browser would not play this audio.", true));
});

// Reads Server-Sent Events from a fetch body, calling onEvent with each JSON payload.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data || data === "[DONE]") continue;
      onEvent(JSON.parse(data));
    }
  }
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.audio || state.busy) return;
  state.busy = true;
  state.lastText = "";
  state.segments = [];
  state.controller = new AbortController();
  ui.transcript.textContent = "";
  ui.segments.replaceChildren();
  ui.languageInfo.textContent = "";
  showProgress(0);
  ui.transcript.setAttribute("aria-busy", "true");
  refreshButtons();
  const started = performance.now();
  const verb = task() === "translate" ? "Translating" : "Transcribing";
  const timer = setInterval(() => {
    setStatus(`${verb}… ${formatSeconds((performance.now() - started) / 1000)}`);
  }, 500);
  setStatus(`${verb}…`);
  const path = task() === "translate" ? "/v1/audio/translations" : "/v1/audio/transcriptions";
  try {
    const response = await fetch(path, {
      method: "POST", headers: headers(), body: formData(), signal: state.controller.signal,
    });
    if (response.status === 401) {
      setStatus("The server needs a valid API key.", true);
      askForKey("This server needs an API key. It is kept in this browser tab only.");
      return;
    }
    if (!response.ok) {
      setStatus(await errorMessage(response), true);
      return;
    }
    let failed = null;
    await readEvents(response, (payload) => {
      if (payload.error) {
        failed = payload.error.message || "The transcription failed.";
      } else if (payload.type === "transcript.text.delta") {
        ui.transcript.append(document.createTextNode(payload.delta));
      } else if (payload.type === "transcript.text.segment") {
        addSegment({ start: payload.start, end: payload.end, text: payload.text });
        showProgress(payload.end);
      } else if (payload.type === "transcript.text.done") {
        ui.transcript.textContent = payload.text;
        if (payload.duration) state.audio.duration = payload.duration;
        showProgress(payload.duration || 0, true);
        if (payload.language) {
          const how = task() === "translate" ? "translated into"
            : ui.language.value === "auto" ? "detected" : "chosen";
          ui.languageInfo.textContent = `Language (${how}): ${payload.language}`;
        }
      }
    });
    state.lastText = ui.transcript.textContent;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (failed) setStatus(failed, true);
    else setStatus(state.lastText ? `Done in ${seconds} s.` : `No speech recognised (${seconds} s).`);
  } catch (err) {
    if (err.name === "AbortError") {
      state.lastText = ui.transcript.textContent;
      setStatus("Stopped.");
    } else {
      setStatus(`The request failed: ${err.message}`, true);
    }
  } finally {
    clearInterval(timer);
    state.busy = false;
    state.controller = null;
    ui.transcript.setAttribute("aria-busy", "false");
    refreshButtons();
  }
});

ui.cancel.addEventListener("click", () => {
  if (state.controller) state.controller.abort();
});

// ---------------------------------------------------------------- results
ui.copy.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(state.lastText);
    setStatus("Copied the text.");
  } catch (_) {
    setStatus("The browser did not allow copying; select the text instead.", true);
  }
});

// Subtitles from the segments already received, by the server's rules (harken/formats.py):
// one line per cue, times that never go backwards, a cue that runs past the next one's start
// ending there, cues numbered from 1.
function cues() {
  const result = [];
  let previousStart = 0;
  for (const segment of state.segments) {
    const text = segment.text.split(/\s+/).filter(Boolean).join(" ");
    if (!text) continue;
    const start = Math.max(segment.start, previousStart, 0);
    const last = result[result.length - 1];
    if (last && last.start < start && start < last.end) last.end = start;
    result.push({ start, end: Math.max(segment.end, start), text });
    previousStart = start;
  }
  return result;
}

function timestamp(seconds, separator) {
  let millis = Math.max(0, Math.round(seconds * 1000));
  const hours = Math.floor(millis / 3600000);
  millis -= hours * 3600000;
  const minutes = Math.floor(millis / 60000);
  millis -= minutes * 60000;
  const secs = Math.floor(millis / 1000);
  millis -= secs * 1000;
  const two = (n) => String(n).padStart(2, "0");
  return `${two(hours)}:${two(minutes)}:${two(secs)}${separator}${String(millis).padStart(3, "0")}`;
}

function toSrt() {
  return cues().map((cue, i) => `${i + 1}\n${timestamp(cue.start, ",")} --> ` +
    `${timestamp(cue.end, ",")}\n${cue.text.replaceAll("-->", "->")}\n`).join("\n");
}

function toVtt() {
  // WebVTT cue text is markup: a bare < or & would start a tag or an entity.
  const escape = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  return ["WEBVTT\n", ...cues().map((cue) => `${timestamp(cue.start, ".")} --> ` +
    `${timestamp(cue.end, ".")}\n${escape(cue.text)}\n`)].join("\n");
}

function download(text, extension, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${baseName()}.${extension}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function downloadSubtitles(kind) {
  if (kind === "srt") download(toSrt(), "srt", "application/x-subrip");
  else download(toVtt(), "vtt", "text/vtt");
  setStatus(`Downloaded ${baseName()}.${kind}.`);
}

ui.srt.addEventListener("click", () => downloadSubtitles("srt"));
ui.vtt.addEventListener("click", () => downloadSubtitles("vtt"));
ui.model.addEventListener("change", modelChanged);
for (const radio of ui.form.elements.task) radio.addEventListener("change", modelChanged);

// ---------------------------------------------------------------- live
// The microphone → an AudioWorklet (PCM16 at 24 kHz) → OpenAI's Realtime API (GA shapes) on
// /v1/realtime. Deltas grow a dimmed line per utterance; `completed` replaces it with the final
// text. A WebSocket carries no headers, so a credential travels as the subprotocol OpenAI's own
// browser clients use: a short-lived client secret, not the key itself.
const LIVE_RATE = 24000;

// A client secret for one session; the key itself only from a server without the endpoint.
async function liveCredential() {
  if (!state.key) return null;
  const response = await fetch("/v1/realtime/client_secrets", {
    method: "POST",
    headers: { ...headers(), "Content-Type": "application/json" },
    body: JSON.stringify({ session: { type: "transcription" } }),
  });
  if (response.status === 404) return state.key;
  if (!response.ok) throw new Error(await errorMessage(response));
  return (await response.json()).value;
}

function liveStatus(message, isError = false) {
  ui.liveStatus.textContent = message;
  ui.liveStatus.classList.toggle("error", isError);
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function utterance(live, itemId) {
  let line = live.items.get(itemId);
  if (!line) {
    line = document.createElement("p");
    line.className = "utterance partial";
    line.dataset.item = itemId;
    ui.liveTranscript.append(line);
    live.items.set(itemId, line);
  }
  return line;
}

function sessionUpdate() {
  const transcription = { model: ui.model.value };
  if (ui.language.value !== "auto") transcription.language = ui.language.value;
  return {
    type: "session.update",
    session: {
      type: "transcription",
      audio: {
        input: {
          format: { type: "audio/pcm", rate: LIVE_RATE },
          transcription,
          turn_detection: { type: "server_vad" },
        },
      },
    },
  };
}

function onLiveEvent(live, event) {
  switch (event.type) {
    case "session.updated":
      liveStatus("Listening… speak now.");
      break;
    case "input_audio_buffer.speech_started":
      live.open.add(event.item_id);
      utterance(live, event.item_id);
      liveStatus("Hearing speech…");
      break;
    case "input_audio_buffer.speech_stopped":
      live.open.delete(event.item_id);
      break;
    case "conversation.item.input_audio_transcription.delta":
      utterance(live, event.item_id).append(document.createTextNode(event.delta));
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const line = utterance(live, event.item_id);
      line.textContent = event.transcript;
      line.className = "utterance final";
      live.done.add(event.item_id);
      liveStatus(live.stopping ? "Finishing…" : "Listening… speak now.");
      break;
    }
    case "conversation.item.input_audio_transcription.failed": {
      const line = utterance(live, event.item_id);
      line.className = "utterance failed";
      live.done.add(event.item_id);
      liveStatus((event.error && event.error.message) || "This utterance failed.", true);
      break;
    }
    case "error":
      liveStatus((event.error && event.error.message) || "The server reported an error.", true);
      break;
    default:
      break;  // committed, item added/done: nothing to show
  }
  if (live.stopping && [...live.items.keys()].every((id) => live.done.has(id))) {
    live.socket.close(1000);
  }
}

async function startLive() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    liveStatus("Live mode needs a browser with AudioWorklet, on https:// or localhost.", true);
    return;
  }
  const credential = await liveCredential();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (err) {
    liveStatus(`The microphone is not available: ${err.message}`, true);
    return;
  }
  let context;
  try {
    context = new AudioContext({ sampleRate: LIVE_RATE });
  } catch (_) {
    context = new AudioContext();  // the worklet resamples to 24 kHz
  }
  await context.audioWorklet.addModule("/web/pcm16-worklet.js");
  const worklet = new AudioWorkletNode(context, "pcm16");
  context.createMediaStreamSource(stream).connect(worklet);
  worklet.connect(context.destination);  // keeps it running; it outputs silence

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = ["realtime"];
  if (credential) protocols.push(`openai-insecure-api-key.${credential}`);
  const socket = new WebSocket(`${scheme}://${location.host}/v1/realtime?intent=transcription`,
    protocols);
  const live = {
    socket, stream, context, worklet, stopping: false,
    items: new Map(), open: new Set(), done: new Set(),
  };
  state.live = live;
  ui.liveTranscript.replaceChildren();
  ui.liveToggle.setAttribute("aria-pressed", "true");
  ui.liveToggle.textContent = "Stop live transcription";
  liveStatus("Connecting…");

  // Audio captured while the socket opens waits for it, so the first words are not lost.
  const waiting = [];
  const append = (buffer) => JSON.stringify({ type: "input_audio_buffer.append", audio: base64(buffer) });
  worklet.port.onmessage = (message) => {
    if (live.stopping) return;
    if (socket.readyState === WebSocket.OPEN) socket.send(append(message.data));
    else if (socket.readyState === WebSocket.CONNECTING) waiting.push(message.data);
  };
  socket.addEventListener("open", () => {
    socket.send(JSON.stringify(sessionUpdate()));
    for (const buffer of waiting.splice(0)) socket.send(append(buffer));
  });
  socket.addEventListener("message", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    onLiveEvent(live, event);
  });
  socket.addEventListener("close", (event) => {
    stopMicrophone(live);
    if (state.live === live) state.live = null;
    ui.liveToggle.setAttribute("aria-pressed", "false");
    ui.liveToggle.textContent = "Start live transcription";
    if (live.stopping && event.code === 1000) liveStatus("Stopped.");
    else if (!ui.liveStatus.classList.contains("error")) {
      liveStatus(`The connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""}).`,
        true);
    }
  });
}

function stopMicrophone(live) {
  live.stream.getTracks().forEach((track) => track.stop());
  live.worklet.port.onmessage = null;
  live.worklet.disconnect();
  if (live.context.state !== "closed") live.context.close();
}

// Stops the microphone at once; an utterance still open is committed, and the socket closes
// when every utterance has its final text (or after 10 s).
function stopLive() {
  const live = state.live;
  if (!live || live.stopping) return;
  live.stopping = true;
  stopMicrophone(live);
  if (live.socket.readyState !== WebSocket.OPEN) {
    live.socket.close();
    return;
  }
  if (live.open.size > 0) live.socket.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  if ([...live.items.keys()].every((id) => live.done.has(id)) && live.open.size === 0) {
    live.socket.close(1000);
  } else {
    liveStatus("Finishing…");
    setTimeout(() => live.socket.close(1000), 10000);
  }
}

ui.liveToggle.addEventListener("click", () => {
  if (state.live) stopLive();
  else startLive().catch((err) => liveStatus(`Live mode failed: ${err.message}`, true));
});

// ---------------------------------------------------------------- start
refreshButtons();
loadModels();
