// The built-in chat page: a thin client of this server's OpenAI API (/v1/models, streamed /v1/chat/completions).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const STORE = "llm-server-chat";
  let state = load();
  let controller = null;
  let attachments = [];  // images (data: URLs) pasted or dropped for the next message

  function load() {
    try {
      const saved = JSON.parse(localStorage.getItem(STORE) || "{}");
      return { model: saved.model || "", system: saved.system || "", temperature: saved.temperature ?? 0.7,
               apiKey: saved.apiKey || "", messages: Array.isArray(saved.messages) ? saved.messages : [] };
    } catch (error) {
      return { model: "", system: "", temperature: 0.7, apiKey: "", messages: [] };
    }
  }
  function persist() {
    try { localStorage.setItem(STORE, JSON.stringify(state)); }
    catch (error) { $("status").textContent = "This conversation is too large to keep after a reload (images)."; }
  }
  // A message's text and images: content is a string, or OpenAI content parts (text and image_url).
  function textOf(content) {
    return typeof content === "string" ? content
      : content.filter((part) => part.type === "text").map((part) => part.text).join("");
  }
  function imagesOf(content) {
    return typeof content === "string" ? [] : content.filter((part) => part.type === "image_url").map((part) => part.image_url.url);
  }
  function headers() {
    const result = { "Content-Type": "application/json" };
    if (state.apiKey) result.Authorization = "Bearer " + state.apiKey;
    return result;
  }

  function addBubble(role, text, thinking) {
    const bubble = document.createElement("div");
    bubble.className = "message " + role;
    if (role === "assistant") {
      const answer = document.createElement("div");
      answer.className = "answer";
      bubble.append(answer);
    }
    fill(bubble, role, text, thinking);
    $("messages").appendChild(bubble);
    $("messages").scrollTop = $("messages").scrollHeight;
    return bubble;
  }
  function fill(bubble, role, content, thinking) {
    if (role !== "assistant") {
      bubble.textContent = textOf(content);
      const images = imagesOf(content);
      if (images.length) {
        const row = document.createElement("div");
        row.className = "images";
        for (const url of images) { const img = document.createElement("img"); img.src = url; row.append(img); }
        bubble.prepend(row);
      }
      return;
    }
    const text = content;
    // A thinking model's reasoning: a collapsible block, open while it streams, folded once the answer starts.
    let details = bubble.querySelector(".thinking");
    if (thinking && !details) {
      details = document.createElement("details");
      details.className = "thinking";
      details.innerHTML = "<summary>Thinking</summary><div class=\"thinking-text\"></div>";
      bubble.prepend(details);
    }
    if (!details) { bubble.querySelector(".answer").innerHTML = ChatMarkdown.renderMarkdown(text); return; }
    details.querySelector(".thinking-text").textContent = thinking;
    if (thinking && !text && !details.dataset.opened) { details.open = true; details.dataset.opened = "1"; }
    if (text && !details.dataset.folded) { details.open = false; details.dataset.folded = "1"; }
    bubble.querySelector(".answer").innerHTML = ChatMarkdown.renderMarkdown(text);
  }
  function redraw() {
    $("messages").innerHTML = "";
    for (const message of state.messages) addBubble(message.role, message.content, message.reasoning_content);
  }

  async function loadModels() {
    const select = $("model");
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      select.innerHTML = "";
      for (const card of body.data) {
        const option = document.createElement("option");
        option.value = card.id;
        option.textContent = card.id + (card.status ? " (" + card.status + ")" : "");
        select.appendChild(option);
      }
      // The conversation's own model if the server still has it, else the server's default model.
      const fallback = body.data.find((card) => card.default);
      if (state.model && body.data.some((card) => card.id === state.model)) select.value = state.model;
      else if (fallback) select.value = fallback.id;
      state.model = select.value;
      persist();
    } catch (error) {
      $("status").textContent = "Could not list models: " + error.message;
    }
  }

  // While a request waits for its model to load, the card says how far the load has come (/v1/models/{id}:
  // status "loading", loading.progress 0..1): shown as a bar until the load ends or the request does.
  function watchLoad(model, until) {
    const box = $("loading");
    let finished = false;
    until.finally(() => { finished = true; box.hidden = true; });
    (async () => {
      while (!finished) {
        try {
          const response = await fetch("/v1/models/" + encodeURIComponent(model), { headers: headers() });
          const card = response.ok ? await response.json() : {};
          if (card.status === "loading" && card.loading && !finished) {
            $("load-progress").value = card.loading.progress;
            $("load-label").textContent = "Loading " + model + ": " + Math.round(card.loading.progress * 100) +
              " % (" + card.loading.stage + ")";
            box.hidden = false;
          } else if (card.status && card.status !== "loading") {
            box.hidden = true;
            if (card.status !== "available") return;  // loaded or failed: nothing more to show
          }
        } catch (error) { return; }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })();
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  async function send(text) {
    const images = attachments.map((url) => ({ type: "image_url", image_url: { url } }));
    const content = images.length ? images.concat([{ type: "text", text }]) : text;
    attachments = [];
    showAttachments();
    state.messages.push({ role: "user", content });
    persist();
    addBubble("user", content);
    const bubble = addBubble("assistant", "");
    const system = state.system.trim() ? [{ role: "system", content: state.system }] : [];
    controller = new AbortController();
    setBusy(true);
    $("status").textContent = "…";
    let answer = "";
    let thinking = "";
    let pending = false;  // a render is scheduled for the next frame
    let tokens = 0;
    let firstAt = null;
    const started = performance.now();
    try {
      const request = fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), signal: controller.signal,
        body: JSON.stringify({ model: state.model, messages: system.concat(state.messages), stream: true,
                               temperature: Number(state.temperature), stream_options: { include_usage: true } }),
      });
      watchLoad(state.model, request.catch(() => {}));  // the headers come once the model is loaded
      const response = await request;
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(body.error ? body.error.message : response.status + " " + response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        const [payloads, rest] = ChatMarkdown.takeEvents(buffer);
        buffer = rest;
        for (const payload of payloads) {
          if (payload === "[DONE]") continue;
          const chunk = JSON.parse(payload);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) tokens = chunk.usage.completion_tokens;
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          const thought = delta && (delta.reasoning_content || delta.reasoning);
          if (delta && (delta.content || thought)) {
            if (firstAt === null) firstAt = performance.now();
            answer += delta.content || "";
            thinking += thought || "";
            // Re-rendering the Markdown on every token keeps the page busy on long answers (Stop then reacts
            // late): render at most once per frame.
            if (!pending) {
              pending = true;
              requestAnimationFrame(() => {
                pending = false;
                fill(bubble, "assistant", answer, thinking);
                $("messages").scrollTop = $("messages").scrollHeight;
              });
            }
          }
        }
      }
      report(tokens, started, firstAt, false);
    } catch (error) {
      if (error.name === "AbortError") {
        report(tokens, started, firstAt, true);
      } else {
        bubble.className = "message error";
        bubble.textContent = "Error: " + error.message;
        $("status").textContent = "";
      }
    } finally {
      controller = null;
      setBusy(false);
      if (bubble.className !== "message error") fill(bubble, "assistant", answer, thinking);  // the last tokens
      if (answer || thinking) {
        const message = { role: "assistant", content: answer };
        if (thinking) message.reasoning_content = thinking;  // the server gives it back to the template
        state.messages.push(message);
      } else if (bubble.className !== "message error") {
        bubble.remove();
      }
      persist();
    }
  }

  function report(tokens, started, firstAt, stopped) {
    if (firstAt === null) { $("status").textContent = stopped ? "Stopped." : ""; return; }
    const seconds = (performance.now() - firstAt) / 1000;
    const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
    $("status").textContent = "TTFT " + ((firstAt - started) / 1000).toFixed(2) + " s · " + tokens + " tokens · "
      + rate + " tok/s" + (stopped ? " · stopped" : "");
  }

  // Images pasted into the message box or dropped on the composer go with the next message (as data: URLs).
  function attach(files) {
    for (const file of files) {
      if (!file.type.startsWith("image/")) continue;
      const reader = new FileReader();
      reader.onload = () => { attachments.push(reader.result); showAttachments(); };
      reader.readAsDataURL(file);
    }
  }
  function showAttachments() {
    const box = $("attachments");
    box.innerHTML = "";
    attachments.forEach((url, index) => {
      const item = document.createElement("div");
      item.className = "attachment";
      const img = document.createElement("img");
      img.src = url;
      img.alt = "attached image " + (index + 1);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = "Remove";
      remove.addEventListener("click", () => { attachments.splice(index, 1); showAttachments(); });
      item.append(img, remove);
      box.append(item);
    });
  }
  $("input").addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
    if (files.some((file) => file.type.startsWith("image/"))) { event.preventDefault(); attach(files); }
  });
  $("composer").addEventListener("dragover", (event) => { event.preventDefault(); $("composer").classList.add("dropping"); });
  $("composer").addEventListener("dragleave", () => $("composer").classList.remove("dropping"));
  $("composer").addEventListener("drop", (event) => {
    event.preventDefault();
    $("composer").classList.remove("dropping");
    attach(Array.from(event.dataTransfer ? event.dataTransfer.files : []));
  });

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    state.messages = [];
    persist();
    redraw();
    $("status").textContent = "";
  });
  $("model").addEventListener("change", () => { state.model = $("model").value; persist(); });
  $("temperature").addEventListener("change", () => { state.temperature = Number($("temperature").value); persist(); });
  $("system").addEventListener("change", () => { state.system = $("system").value; persist(); });
  $("api-key").addEventListener("change", () => { state.apiKey = $("api-key").value; persist(); loadModels(); });

  $("temperature").value = state.temperature;
  $("system").value = state.system;
  $("api-key").value = state.apiKey;
  redraw();
  loadModels();
})();
