/** The demo page: starts the worker on the picked folder, shows its counters and charts both caches. */
import type { FromWorker, StartMessage, StreamReport } from "./protocol.js";

const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const folder = element<HTMLInputElement>("folder");
const startButton = element<HTMLButtonElement>("start");
const stopButton = element<HTMLButtonElement>("stop");
const status = element<HTMLParagraphElement>("status");
const output = element<HTMLDivElement>("text");
const chart = element<HTMLCanvasElement>("chart");

/** KV bytes over tokens seen, per stream. */
const series: Record<"sinks" | "plain", [number, number][]> = { sinks: [], plain: [] };
const COLORS = { sinks: "#1b6ac9", plain: "#d1495b" };
const number = new Intl.NumberFormat("en");

const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
worker.onmessage = (event: MessageEvent<FromWorker>) => {
  const message = event.data;
  if (message.type === "loaded") status.textContent = `${message.model_type} model loaded in ${message.load_seconds.toFixed(1)} s; streaming.`;
  else if (message.type === "step") step(message.text, message.sinks, message.plain);
  else if (message.type === "stopped") {
    status.textContent += " Stopped.";
    startButton.disabled = false;
  } else {
    status.textContent = `Error: ${message.message}`;
    startButton.disabled = false;
    stopButton.disabled = true;
  }
};

folder.onchange = () => {
  const files = [...(folder.files ?? [])];
  const names = new Set(files.map((file) => file.name));
  const missing = ["config.json", "tokenizer.json", "model.onnx"].filter((name) => !names.has(name));
  status.textContent = missing.length ? `The folder has no ${missing.join(", ")}: pick a transformers.js model folder.` : `${files.length} files picked.`;
  startButton.disabled = missing.length > 0;
};

startButton.onclick = () => {
  const value = (id: string) => Number(element<HTMLInputElement>(id).value);
  const start: StartMessage = {
    type: "start",
    files: [...(folder.files ?? [])],
    prompt: element<HTMLInputElement>("prompt").value,
    attention_sink_size: value("sinks"),
    attention_sink_window_size: value("window"),
    plain_tokens: value("plain"),
  };
  series.sinks = [];
  series.plain = [];
  output.textContent = "";
  status.textContent = "Loading the model…";
  startButton.disabled = true;
  stopButton.disabled = false;
  worker.postMessage(start);
};

stopButton.onclick = () => {
  stopButton.disabled = true;
  worker.postMessage({ type: "stop" });
};

function step(text: string, sinks: StreamReport, plain: StreamReport | null): void {
  output.append(text);
  output.scrollTop = output.scrollHeight;
  show("sinks", sinks);
  if (plain) show("plain", plain);
  draw();
}

function show(name: "sinks" | "plain", report: StreamReport): void {
  const { seen_tokens, cached_tokens, kv_cache_bytes } = report.stats;
  element(`${name}-seen`).textContent = number.format(seen_tokens);
  element(`${name}-speed`).textContent = report.tokens_per_second.toFixed(0);
  element(`${name}-cached`).textContent = number.format(cached_tokens);
  element(`${name}-bytes`).textContent = number.format(kv_cache_bytes);
  const points = series[name];
  if (points.at(-1)?.[0] !== seen_tokens) points.push([seen_tokens, kv_cache_bytes]);
}

/** Both series on shared axes: x tokens seen, y KV bytes. */
function draw(): void {
  const context = chart.getContext("2d")!;
  const { width, height } = chart;
  const margin = { left: 70, bottom: 30, top: 10, right: 10 };
  const all = [...series.sinks, ...series.plain];
  const maxX = Math.max(1, ...all.map(([x]) => x));
  const maxY = Math.max(1, ...all.map(([, y]) => y));
  const x = (value: number) => margin.left + (value / maxX) * (width - margin.left - margin.right);
  const y = (value: number) => height - margin.bottom - (value / maxY) * (height - margin.top - margin.bottom);
  context.clearRect(0, 0, width, height);
  context.strokeStyle = "#999";
  context.fillStyle = "#333";
  context.font = "12px system-ui";
  context.beginPath();
  context.moveTo(margin.left, margin.top);
  context.lineTo(margin.left, height - margin.bottom);
  context.lineTo(width - margin.right, height - margin.bottom);
  context.stroke();
  context.fillText(`${number.format(maxY)} B`, 4, margin.top + 10);
  context.fillText("KV bytes", 4, height / 2);
  context.fillText(`${number.format(maxX)} tokens`, width - margin.right - 90, height - 8);
  for (const name of ["plain", "sinks"] as const) {
    const points = series[name];
    if (points.length === 0) continue;
    context.strokeStyle = COLORS[name];
    context.lineWidth = 2;
    context.beginPath();
    points.forEach(([px, py], i) => (i === 0 ? context.moveTo(x(px), y(py)) : context.lineTo(x(px), y(py))));
    context.stroke();
  }
  context.fillStyle = COLORS.sinks;
  context.fillText("attention sinks", margin.left + 10, margin.top + 14);
  context.fillStyle = COLORS.plain;
  context.fillText("plain transformers.js", margin.left + 10, margin.top + 30);
}
