// harken's web page: plain JS, no build step. It talks to the same API as any other client:
// GET /v1/models, and POST /v1/audio/transcriptions (streamed for the live transcript, srt on
// demand for subtitles). The API key, when the server needs one, stays in sessionStorage.
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
  transcribe: $("transcribe"), cancel: $("cancel"), status: $("status"),
  transcript: $("transcript"), copy: $("copy"), srt: $("download-srt"), vtt: $("download-vtt"),
};

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  audio: null,          // {blob, name}
  modelsLoaded: false,
  busy: false,
  controller: null,
  recorder: null,
  subtitles: null,      // {key, srt} for the current audio, model and language
  lastText: "",
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

function refreshButtons() {
  const ready = state.modelsLoaded && state.audio && !state.busy;
  ui.transcribe.disabled = !ready;
  ui.cancel.hidden = !state.busy;
  const done = !state.busy && state.lastText.length > 0;
  ui.copy.disabled = !done;
  ui.srt.disabled = !done;
  ui.vtt.disabled = !done;
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
function fillLanguages() {
  let names = null;
  try { names = new Intl.DisplayNames(["en"], { type: "language" }); } catch (_) { /* old browser */ }
  const options = LANGUAGES.map((code) => {
    let label = code;
    try { label = (names && names.of(code)) || code; } catch (_) { /* unknown to the browser */ }
    return [code, label];
  }).sort((a, b) => a[1].localeCompare(b[1]));
  ui.language.append(new Option("Detect automatically", "auto", true, true));
  for (const [code, label] of options) ui.language.append(new Option(`${label} (${code})`, code));
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
  const previous = ui.model.value;
  ui.model.replaceChildren();
  for (const model of body.data) ui.model.append(new Option(model.id, model.id));
  if (previous && body.data.some((m) => m.id === previous)) ui.model.value = previous;
  ui.keyForm.hidden = true;
  state.modelsLoaded = true;
  setStatus(state.audio ? "Ready." : "Choose a file or record to begin.");
  refreshButtons();
}

// ---------------------------------------------------------------- choosing audio
function useAudio(blob, name) {
  state.audio = { blob, name };
  state.subtitles = null;
  if (ui.preview.src) URL.revokeObjectURL(ui.preview.src);
  ui.preview.src = URL.createObjectURL(blob);
  ui.preview.hidden = false;
  const kb = Math.max(1, Math.round(blob.size / 1024));
  ui.audioInfo.textContent = `Selected: ${name} (${kb} kB).`;
  if (state.modelsLoaded) setStatus("Ready.");
  refreshButtons();
}

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
    useAudio(new Blob(chunks, { type }), `recording.${extension}`);
  });
  state.recorder = recorder;
  recorder.start(250);
  ui.record.setAttribute("aria-pressed", "true");
  ui.record.textContent = "Stop recording";
  setStatus("Recording… 0:00");
});

// ---------------------------------------------------------------- transcribing
function formData(responseFormat, stream) {
  const data = new FormData();
  data.append("file", state.audio.blob, state.audio.name);
  data.append("model", ui.model.value);
  if (ui.language.value !== "auto") data.append("language", ui.language.value);
  data.append("response_format", responseFormat);
  if (stream) data.append("stream", "true");
  return data;
}

function subtitleKey() {
  return `${ui.model.value}|${ui.language.value}`;
}

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
  state.subtitles = null;
  state.controller = new AbortController();
  ui.transcript.textContent = "";
  ui.transcript.setAttribute("aria-busy", "true");
  refreshButtons();
  const started = performance.now();
  const timer = setInterval(() => {
    setStatus(`Transcribing… ${formatSeconds((performance.now() - started) / 1000)}`);
  }, 500);
  setStatus("Transcribing…");
  try {
    const response = await fetch("/v1/audio/transcriptions", {
      method: "POST", headers: headers(), body: formData("json", true),
      signal: state.controller.signal,
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
      } else if (payload.type === "transcript.text.done") {
        ui.transcript.textContent = payload.text;
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

async function subtitles() {
  const key = subtitleKey();
  if (state.subtitles && state.subtitles.key === key) return state.subtitles.srt;
  setStatus("Timing the subtitles…");
  const response = await fetch("/v1/audio/transcriptions", {
    method: "POST", headers: headers(), body: formData("srt", false),
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  const srt = await response.text();
  state.subtitles = { key, srt };
  return srt;
}

// WebVTT from SubRip: the header, '.' before milliseconds, and cue text escaped as markup.
function srtToVtt(srt) {
  const blocks = srt.replace(/\r\n/g, "\n").trim().split(/\n\n+/).filter(Boolean);
  const cues = blocks.map((block) => {
    const lines = block.split("\n");
    const timing = lines[1].replace(/,(\d{3})/g, ".$1");
    const text = lines.slice(2).join("\n")
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    return `${timing}\n${text}\n`;
  });
  return ["WEBVTT\n", ...cues].join("\n");
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

async function downloadSubtitles(kind, button) {
  button.disabled = true;
  try {
    const srt = await subtitles();
    if (kind === "srt") download(srt, "srt", "application/x-subrip");
    else download(srtToVtt(srt), "vtt", "text/vtt");
    setStatus(`Downloaded ${baseName()}.${kind}.`);
  } catch (err) {
    setStatus(`Subtitles failed: ${err.message}`, true);
  } finally {
    refreshButtons();
  }
}

ui.srt.addEventListener("click", () => downloadSubtitles("srt", ui.srt));
ui.vtt.addEventListener("click", () => downloadSubtitles("vtt", ui.vtt));
ui.model.addEventListener("change", refreshButtons);

// ---------------------------------------------------------------- start
fillLanguages();
refreshButtons();
loadModels();
