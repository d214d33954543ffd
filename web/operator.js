// The operator's view (admin keys only): loaded models and their memory, queue and running sequences, generated
// tokens per second over the last minutes, per-key usage and error counts: read from /v1/models, /metrics and
// /admin/usage every few seconds while the view is open.
(function (root) {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const SAMPLE_MS = 2000, KEEP = 150;  // 5 minutes of samples
  let timer = null, samples = [], headers = () => ({}), onUnload = () => {};

  // Prometheus text format: [{name, labels, value}]
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      const match = /^([a-zA-Z_:][\w:]*)(\{(.*)\})? ([-+\d.eE]+|NaN)$/.exec(line.trim());
      if (!match) continue;
      const labels = {};
      for (const pair of (match[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
      out.push({ name: match[1], labels, value: Number(match[4]) });
    }
    return out;
  }
  const sum = (metrics, name, filter) => metrics.filter((m) => m.name === name && (!filter || filter(m.labels)))
    .reduce((total, m) => total + m.value, 0);

  function bytes(value) {
    if (!value) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let index = 0;
    while (value >= 1024 && index < units.length - 1) { value /= 1024; index++; }
    return value.toFixed(index ? 1 : 0) + " " + units[index];
  }

  function card(label, value) {
    const item = document.createElement("div");
    item.className = "card";
    const strong = document.createElement("b");
    strong.textContent = value;
    item.append(strong, document.createTextNode(label));
    return item;
  }

  function row(cells, extra) {
    const tr = document.createElement("tr");
    for (const cell of cells) { const td = document.createElement("td"); td.textContent = cell; tr.append(td); }
    if (extra) { const td = document.createElement("td"); td.append(extra); tr.append(td); }
    return tr;
  }

  function drawRate() {
    const canvas = $("operator-rate"), context = canvas.getContext("2d");
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const seconds = (samples[i].at - samples[i - 1].at) / 1000;
      rates.push(Math.max(0, (samples[i].tokens - samples[i - 1].tokens) / seconds));
    }
    const style = getComputedStyle(document.documentElement);
    context.clearRect(0, 0, canvas.width, canvas.height);
    const top = Math.max(10, ...rates) * 1.15;
    context.strokeStyle = style.getPropertyValue("--accent").trim() || "#2f6fde";
    context.lineWidth = 2;
    context.beginPath();
    rates.forEach((rate, index) => {
      const x = canvas.width - (rates.length - 1 - index) * (canvas.width / (KEEP - 1));
      const y = canvas.height - (rate / top) * (canvas.height - 14);
      if (index) context.lineTo(x, y); else context.moveTo(x, y);
    });
    context.stroke();
    context.fillStyle = style.getPropertyValue("--muted").trim() || "#666";
    context.font = "12px system-ui";
    const last = rates.length ? rates[rates.length - 1] : 0;
    context.fillText("now " + last.toFixed(1) + " tok/s · peak " + Math.max(0, ...rates).toFixed(1), 8, 14);
  }

  async function refresh() {
    const [metricsResponse, modelsResponse, usageResponse] = await Promise.all([
      fetch("/metrics", { headers: headers() }), fetch("/v1/models", { headers: headers() }),
      fetch("/admin/usage", { headers: headers() })]);
    const metrics = parseMetrics(await metricsResponse.text());
    const models = (await modelsResponse.json()).data || [];
    const usage = usageResponse.ok ? await usageResponse.json() : { keys: {} };
    samples.push({ at: Date.now(), tokens: sum(metrics, "llm_key_tokens_total", (l) => l.kind === "completion") });
    if (samples.length > KEEP) samples.shift();

    const summary = $("operator-summary");
    summary.replaceChildren(
      card("models loaded", String(sum(metrics, "llm_loaded_models"))),
      card("sequences running", String(sum(metrics, "llm_active_sequences"))),
      card("requests queued", String(sum(metrics, "llm_queue_depth"))),
      card("model memory", bytes(sum(metrics, "llm_model_memory_bytes"))));

    const modelRows = $("operator-models").querySelector("tbody");
    modelRows.replaceChildren(...models.map((model) => {
      let unload = null;
      if (model.loaded) {
        unload = document.createElement("button");
        unload.type = "button";
        unload.textContent = "Unload";
        unload.setAttribute("aria-label", "Unload " + model.id);
        unload.addEventListener("click", async () => {
          unload.disabled = true;
          await fetch("/admin/models/unload", { method: "POST", headers: Object.assign({ "Content-Type": "application/json" }, headers()),
                                               body: JSON.stringify({ model: model.id }) });
          onUnload();
          refresh();
        });
      }
      return row([model.id, model.status + (model.error ? ": " + model.error : ""), bytes(model.memory_bytes)], unload);
    }));

    const keyRows = $("operator-keys").querySelector("tbody");
    keyRows.replaceChildren(...Object.entries(usage.keys).map(([label, key]) => row(
      [label + (key.role ? " (" + key.role + ")" : ""), String(key.requests),
       key.prompt_tokens + " / " + key.completion_tokens, String(key.errors + key.rate_limited), String(key.in_flight)])));

    const errors = metrics.filter((m) => m.name === "llm_requests_total" && Number(m.labels.status) >= 400);
    const list = $("operator-errors");
    list.replaceChildren(...(errors.length ? errors : [null]).map((m) => {
      const item = document.createElement("li");
      item.textContent = m ? m.labels.status + " on " + m.labels.route + (m.labels.model ? " (" + m.labels.model + ")" : "")
        + ": " + m.value + " since start" : "none since start";
      return item;
    }));
    drawRate();
  }

  function open(getHeaders, unloaded) {
    headers = getHeaders;
    onUnload = unloaded;
    $("operator").showModal();
    const tick = () => refresh().catch((error) => { $("operator-errors").textContent = "Could not read the server: " + error.message; });
    tick();
    timer = setInterval(tick, SAMPLE_MS);
  }

  function close() {
    clearInterval(timer);
    timer = null;
    $("operator").close();
  }

  root.ChatOperator = { open, close, parseMetrics };
})(this);
