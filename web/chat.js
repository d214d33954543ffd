// The chat page: conversations (ChatTree, kept by ChatStore), answers streamed from this server's OpenAI API and
// rendered by ChatMarkdown, per-model settings, model status and load progress, the operator's view (ChatOperator).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let settings = ChatStore.loadSettings();
  let saved = null;  // where conversations are kept (ChatStore.open: the server, or this browser)
  let models = [];
  let conversation = null;
  let controller = null;  // the generation in flight
  let attachments = [];  // {kind: "image", name, url} | {kind: "file", name, text}
  let isAdmin = false;

  function headers() {
    const result = { "Content-Type": "application/json" };
    if (settings.apiKey) result.Authorization = "Bearer " + settings.apiKey;
    return result;
  }
  function persistSettings() { ChatStore.saveSettings(settings); }
  const currentModel = () => $("model").value || settings.model;
  const card = (id) => models.find((model) => model.id === id);

  // ------------------------------------------------------------------ theme

  function applyTheme() {
    const theme = settings.theme;
    if (theme === "system") document.documentElement.removeAttribute("data-theme");
    else document.documentElement.dataset.theme = theme;
    const dark = theme === "dark" || (theme === "system" && matchMedia("(prefers-color-scheme: dark)").matches);
    $("hljs-light").disabled = dark;
    $("hljs-dark").disabled = !dark;
    $("theme").title = "Theme: " + theme;
  }
  $("theme").addEventListener("click", () => {
    settings.theme = { system: "light", light: "dark", dark: "system" }[settings.theme] || "system";
    persistSettings();
    applyTheme();
  });
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);

  // ------------------------------------------------------------------ models

  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      models = body.data;
      const select = $("model");
      const chosen = select.value || settings.model;
      select.replaceChildren(...models.map((model) => {
        const option = document.createElement("option");
        option.value = model.id;
        option.textContent = model.id + (model.status ? " (" + model.status + ")" : "");
        return option;
      }));
      const fallback = models.find((model) => model.default) || models[0];
      select.value = chosen && card(chosen) ? chosen : (fallback ? fallback.id : "");
      settings.model = select.value;
      persistSettings();
      showModelInfo();
    } catch (error) {
      $("status").textContent = "Could not list models: " + error.message;
    }
  }

  function chip(text, kind) {
    const item = document.createElement("span");
    item.className = "chip" + (kind ? " " + kind : "");
    item.textContent = text;
    return item;
  }
  function showModelInfo() {
    const model = card(currentModel());
    const box = $("model-info");
    if (!model) { box.replaceChildren(); return; }
    const caps = model.capabilities || {};
    const chips = [chip(model.status, model.status === "loaded" ? "loaded" : model.status === "failed" ? "failed" : "")];
    if (model.error) chips[0].title = model.error;
    if (model.context_length) chips.push(chip(model.context_length.toLocaleString() + " ctx"));
    if (caps.vision) chips.push(chip("vision"));
    if (caps.tools) chips.push(chip("tools"));
    if (caps.reasoning) chips.push(chip("reasoning"));
    box.replaceChildren(...chips);
  }
  $("model").addEventListener("change", () => { settings.model = $("model").value; persistSettings(); showModelInfo(); });

  // While a request waits for its model to load, the card says how far the load has come (status "loading",
  // loading.progress 0..1): a bar until the load or the request ends.
  function watchLoad(model, until) {
    const box = $("loading");
    let finished = false;
    until.finally(() => { finished = true; box.hidden = true; });
    (async () => {
      while (!finished) {
        try {
          const response = await fetch("/v1/models/" + encodeURIComponent(model), { headers: headers() });
          const info = response.ok ? await response.json() : {};
          if (info.status === "loading" && info.loading && !finished) {
            $("load-progress").value = info.loading.progress;
            $("load-label").textContent = "Loading " + model + ": " + Math.round(info.loading.progress * 100) +
              " % (" + info.loading.stage + ")";
            box.hidden = false;
          } else if (info.status && info.status !== "loading") {
            box.hidden = true;
            if (info.status !== "available") return;
          }
        } catch (error) { return; }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    })();
  }

  async function checkAdmin() {
    try {
      const response = await fetch("/whoami", { headers: headers() });
      isAdmin = response.ok && (await response.json()).role === "admin";
    } catch (error) { isAdmin = false; }
    $("operator-button").hidden = !isAdmin;
  }

  // ------------------------------------------------------------------ conversations

  async function refreshList() {
    const query = $("search").value.trim();
    let shown;
    try {
      shown = await saved.list(query);
    } catch (error) {
      $("status").textContent = "Could not list conversations: " + error.message;
      return;
    }
    if (query !== $("search").value.trim()) return;  // (typed on meanwhile: a newer listing is on its way)
    $("conversations").replaceChildren(...shown.map((item) => {
      const entry = document.createElement("div");
      entry.className = "conversation" + (conversation && item.id === conversation.id ? " current" : "");
      entry.dataset.id = item.id;
      const open = button(item.title, () => openConversation(item.id), "Open " + item.title, "open");
      open.title = item.title;
      const rename = button("✎", async () => {
        const title = prompt("Rename the conversation", item.title);
        if (!title || !title.trim()) return;
        const stored = await saved.get(item.id);
        stored.title = title.trim();
        await saved.put(stored);
        if (conversation && conversation.id === item.id) conversation.title = stored.title;
        refreshList();
      }, "Rename " + item.title, "rename");
      const remove = button("✕", async () => {
        if (!confirm("Delete \"" + item.title + "\"?")) return;
        await saved.remove(item.id);
        if (conversation && conversation.id === item.id) newConversation();
        refreshList();
      }, "Delete " + item.title, "delete");
      entry.append(open, rename, remove);
      return entry;
    }));
  }

  async function openConversation(id) {
    if (controller) controller.abort();
    const stored = await saved.get(id);
    if (!stored) return newConversation();
    conversation = stored;
    settings.currentId = id;
    persistSettings();
    render();
    refreshList();
    $("sidebar").classList.remove("open");
  }

  function newConversation() {
    if (controller) controller.abort();
    conversation = ChatTree.create();
    settings.currentId = "";
    persistSettings();
    render();
    refreshList();
    $("status").textContent = "";
    $("sidebar").classList.remove("open");
    $("input").focus();
  }

  async function store() {
    if (!Object.keys(conversation.nodes).length) return;
    conversation.updated = Date.now();
    try {
      await saved.put(conversation);
    } catch (error) {
      $("status").textContent = "Could not keep this conversation: " + error.message;
      return;
    }
    if (settings.currentId !== conversation.id) {
      settings.currentId = conversation.id;
      persistSettings();
    }
    refreshList();
  }

  $("new-chat").addEventListener("click", newConversation);
  $("search").addEventListener("input", refreshList);
  $("open-sidebar").addEventListener("click", () => $("sidebar").classList.add("open"));
  $("close-sidebar").addEventListener("click", () => $("sidebar").classList.remove("open"));
  $("export").addEventListener("click", async () => {
    const blob = new Blob([JSON.stringify({ format: "llm-server-chat", version: 1, conversations: await saved.all() }, null, 1)],
                          { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "conversations.json";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  });
  $("import-file").addEventListener("change", async () => {
    const file = $("import-file").files[0];
    if (!file) return;
    try {
      const body = JSON.parse(await file.text());
      const items = Array.isArray(body) ? body : body.conversations;
      let count = 0;
      for (const item of items || []) {
        if (item && typeof item.id === "string" && item.nodes && Array.isArray(item.roots)) { await saved.put(item); count++; }
      }
      $("status").textContent = "Imported " + count + " conversation" + (count === 1 ? "" : "s") + ".";
    } catch (error) {
      $("status").textContent = "Could not import: " + error.message;
    }
    $("import-file").value = "";
    refreshList();
  });

  // ------------------------------------------------------------------ messages

  function textOf(node) {
    return node.text || node.content || "";
  }
  // What the API gets for a message: text, attached files as text, images as image_url parts.
  function apiMessage(node) {
    if (node.role === "assistant") {
      const message = { role: "assistant", content: node.content || "" };
      if (node.reasoning) message.reasoning_content = node.reasoning;  // given back to the template
      return message;
    }
    let text = node.text || "";
    for (const file of node.files || []) text += "\n\n" + file.name + ":\n```\n" + file.text + "\n```";
    if (!(node.images || []).length) return { role: "user", content: text };
    return { role: "user", content: node.images.map((url) => ({ type: "image_url", image_url: { url } }))
      .concat([{ type: "text", text }]) };
  }

  function button(label, onClick, title, className) {
    const item = document.createElement("button");
    item.type = "button";
    if (className) item.className = className;
    item.textContent = label;
    if (title) item.setAttribute("aria-label", title);
    item.addEventListener("click", onClick);
    return item;
  }

  function branchControls(node) {
    const [index, count] = ChatTree.siblingPosition(conversation, node);
    if (count < 2) return null;
    const box = document.createElement("span");
    box.className = "branch";
    const label = document.createElement("span");
    label.textContent = (index + 1) + " / " + count;
    const previous = button("‹", () => { ChatTree.switchBranch(conversation, node, -1); store(); render(); }, "Previous version");
    const next = button("›", () => { ChatTree.switchBranch(conversation, node, 1); store(); render(); }, "Next version");
    previous.disabled = index === 0 || !!controller;
    next.disabled = index === count - 1 || !!controller;
    box.append(previous, label, next);
    return box;
  }

  function statsText(stats) {
    if (!stats) return "";
    const parts = [stats.model];
    if (stats.ttft != null) parts.push("TTFT " + stats.ttft.toFixed(2) + " s");
    if (stats.tokens != null) parts.push(stats.tokens + " tokens");
    if (stats.rate != null) parts.push(stats.rate.toFixed(1) + " tok/s");
    if (stats.cached) parts.push(stats.cached + " cached");
    if (stats.finish && stats.finish !== "stop") parts.push(stats.finish);
    return parts.join(" · ");
  }

  function bubbleFor(node) {
    const bubble = document.createElement("div");
    bubble.className = "message " + (node.error ? "error" : node.role);
    bubble.dataset.id = node.id;
    if (node.role === "user") {
      if ((node.images || []).length) {
        const row = document.createElement("div");
        row.className = "images";
        for (const url of node.images) { const img = document.createElement("img"); img.src = url; img.alt = "attached image"; row.append(img); }
        bubble.append(row);
      }
      if ((node.files || []).length) {
        const row = document.createElement("div");
        row.className = "files";
        for (const file of node.files) row.append(chip("file: " + file.name));
        bubble.append(row);
      }
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = node.text;
      bubble.append(text);
    } else if (node.error) {
      bubble.textContent = "Error: " + node.error;
    } else {
      const answer = document.createElement("div");
      answer.className = "answer";
      bubble.append(answer);
      fillAnswer(bubble, node, true);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const branches = branchControls(node);
    if (branches) meta.append(branches);
    if (node.role === "user") {
      meta.append(button("Edit", () => editMessage(bubble, node), "Edit and resend"));
    } else {
      const stats = document.createElement("span");
      stats.className = "stats";
      stats.textContent = statsText(node.stats);
      meta.append(stats);
      if (!node.error) meta.append(button("Copy", () => navigator.clipboard.writeText(node.content || "").catch(() => {}), "Copy answer"));
      meta.append(button("Regenerate", () => regenerate(node), "Regenerate"));
      if (node.stats && (node.stats.finish === "length" || node.stats.finish === "stopped")) {
        meta.append(button("Continue", () => continueAnswer(node), "Continue the answer"));
      }
    }
    bubble.append(meta);
    return bubble;
  }

  // An answer's text and thinking: a collapsible block for thinking, open while it streams, folded once the
  // answer starts; tool calls as such; Markdown rendered (and, once complete, highlighted).
  function fillAnswer(bubble, node, complete) {
    let details = bubble.querySelector(".thinking");
    if (node.reasoning && !details) {
      details = document.createElement("details");
      details.className = "thinking";
      const summary = document.createElement("summary");
      const text = document.createElement("div");
      text.className = "thinking-text";
      details.append(summary, text);
      bubble.prepend(details);
    }
    if (details) {
      details.querySelector("summary").textContent = "Thinking" +
        (node.stats && node.stats.reasoningTokens ? " (" + node.stats.reasoningTokens + " tokens)" : "");
      details.querySelector(".thinking-text").textContent = node.reasoning;
      if (!node.content && !complete && !details.dataset.opened) { details.open = true; details.dataset.opened = "1"; }
      if (node.content && !details.dataset.folded) { details.open = false; details.dataset.folded = "1"; }
    }
    const answer = bubble.querySelector(".answer");
    answer.innerHTML = ChatMarkdown.renderMarkdown(node.content || "");
    for (const call of node.toolCalls || []) {
      const box = document.createElement("div");
      box.className = "tool-call";
      box.textContent = "Tool call: " + call.name + "(" + call.arguments + ")";
      answer.append(box);
    }
    if (complete) ChatMarkdown.enhance(answer);
  }

  function render() {
    const box = $("messages");
    box.replaceChildren(...ChatTree.path(conversation).map(bubbleFor));
    box.scrollTop = box.scrollHeight;
    document.title = conversation.title === "New chat" ? "Chat" : conversation.title + " · Chat";
  }

  function editMessage(bubble, node) {
    if (controller) return;
    const box = document.createElement("textarea");
    box.className = "edit-box";
    box.value = node.text;
    box.setAttribute("aria-label", "Edited message");
    const actions = document.createElement("div");
    actions.className = "meta";
    actions.append(button("Save & send", () => {
      const text = box.value.trim();
      if (!text) return;
      const edited = ChatTree.add(conversation, node.parent, { role: "user", text, images: node.images, files: node.files });
      render();
      generate(edited);
    }), button("Cancel", render));
    bubble.replaceChildren(box, actions);
    box.focus();
  }

  function regenerate(node) {
    if (controller) return;
    generate(conversation.nodes[node.parent]);  // (a new answer beside this one: both stay, as branches)
  }

  function continueAnswer(node) {
    if (controller) return;
    generate(conversation.nodes[node.parent], node);
  }

  // ------------------------------------------------------------------ generating

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  // Answers `parent` (a user message) with a new assistant message, or continues `continued` (an assistant
  // message cut short) with the server's continue_final_message.
  async function generate(parent, continued) {
    const model = currentModel();
    const options = ChatStore.modelSettings(settings, model);
    const history = ChatTree.pathUpTo(conversation, continued || parent).map(apiMessage);
    const system = settings.system.trim() ? [{ role: "system", content: settings.system }] : [];
    const node = continued || ChatTree.add(conversation, parent.id, { role: "assistant", content: "", reasoning: "" });
    node.error = null;
    const previous = continued ? { content: node.content, reasoning: node.reasoning, tokens: node.stats ? node.stats.tokens || 0 : 0 } : null;
    render();
    const bubble = $("messages").querySelector('[data-id="' + node.id + '"]');
    const body = { model, messages: system.concat(history), stream: true, stream_options: { include_usage: true },
                   temperature: Number(options.temperature) };
    if (Number(options.top_p) < 1) body.top_p = Number(options.top_p);
    if (Number(options.max_tokens) > 0) body.max_tokens = Number(options.max_tokens);
    if (options.reasoning_effort) body.reasoning_effort = options.reasoning_effort;
    if (continued) body.continue_final_message = true;
    controller = new AbortController();
    setBusy(true);
    $("status").textContent = "…";
    let pending = false, firstAt = null, usage = null, finish = null;
    const started = performance.now();
    const stats = { model };
    const draw = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {  // at most once per frame: long answers stay smooth and Stop stays quick
        pending = false;
        if (bubble) fillAnswer(bubble, node, false);
        $("messages").scrollTop = $("messages").scrollHeight;
      });
    };
    try {
      const request = fetch("/v1/chat/completions", { method: "POST", headers: headers(), signal: controller.signal,
                                                      body: JSON.stringify(body) });
      watchLoad(model, request.catch(() => {}));
      const response = await request;
      if (!response.ok) {
        const failure = await response.json().catch(() => ({}));
        throw new Error(failure.error ? failure.error.message : response.status + " " + response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        const [payloads, rest] = ChatSSE.takeEvents(buffer);
        buffer = rest;
        for (const payload of payloads) {
          if (payload === "[DONE]") continue;
          const chunk = JSON.parse(payload);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          const choice = chunk.choices && chunk.choices[0];
          if (!choice) continue;
          if (choice.finish_reason) finish = choice.finish_reason;
          const delta = choice.delta || {};
          const thought = delta.reasoning_content || delta.reasoning;
          for (const call of delta.tool_calls || []) {
            node.toolCalls = node.toolCalls || [];
            const slot = node.toolCalls[call.index || 0] = node.toolCalls[call.index || 0] || { name: "", arguments: "" };
            if (call.function && call.function.name) slot.name += call.function.name;
            if (call.function && call.function.arguments) slot.arguments += call.function.arguments;
          }
          if (delta.content || thought || delta.tool_calls) {
            if (firstAt === null) firstAt = performance.now();
            node.content += delta.content || "";
            node.reasoning += thought || "";
            draw();
          }
        }
      }
    } catch (error) {
      if (error.name === "AbortError") finish = "stopped";
      else node.error = error.message;
    } finally {
      controller = null;
      setBusy(false);
      if (firstAt !== null) {
        const seconds = (performance.now() - firstAt) / 1000;
        const tokens = usage ? usage.completion_tokens : null;
        stats.ttft = (firstAt - started) / 1000;
        stats.tokens = tokens != null && previous ? tokens + previous.tokens : tokens;
        stats.rate = tokens != null && seconds > 0 ? tokens / seconds : null;
        stats.cached = usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens : 0;
        stats.reasoningTokens = usage && usage.completion_tokens_details ? usage.completion_tokens_details.reasoning_tokens : 0;
      }
      stats.finish = finish;
      node.stats = stats;
      if (!node.content && !node.reasoning && !node.error && !node.toolCalls) {
        node.error = finish === "stopped" ? "stopped before the first token" : "the model returned nothing";
      }
      if (conversation.title === "New chat") conversation.title = firstLine(ChatTree.path(conversation)[0]);
      report(stats);
      await store();
      render();
    }
  }

  function firstLine(node) {
    const text = (node && textOf(node) || "Chat").replace(/\s+/g, " ").trim();
    return text.length > 48 ? text.slice(0, 47) + "…" : text;
  }

  function report(stats) {
    if (stats.ttft == null) { $("status").textContent = stats.finish === "stopped" ? "Stopped." : ""; return; }
    $("status").textContent = "TTFT " + stats.ttft.toFixed(2) + " s · " + (stats.tokens ?? "?") + " tokens · " +
      (stats.rate != null ? stats.rate.toFixed(1) : "–") + " tok/s" + (stats.finish === "stopped" ? " · stopped" : "");
  }

  function send(text) {
    const path = ChatTree.path(conversation);
    const last = path[path.length - 1];
    const node = ChatTree.add(conversation, last ? last.id : null, {
      role: "user", text,
      images: attachments.filter((item) => item.kind === "image").map((item) => item.url),
      files: attachments.filter((item) => item.kind === "file").map(({ name, text: content }) => ({ name, text: content })),
    });
    attachments = [];
    showAttachments();
    generate(node);
  }

  // ------------------------------------------------------------------ attachments

  const TEXT_FILE = /\.(txt|md|markdown|csv|tsv|json|jsonl|ya?ml|toml|ini|cfg|log|xml|html?|css|js|mjs|ts|tsx|jsx|py|rb|go|rs|java|kt|c|cc|cpp|h|hpp|cs|php|sh|bash|sql|swift|r|lua|pl|scala)$/i;
  function attach(files) {
    for (const file of files) {
      if (file.type.startsWith("image/")) {
        const reader = new FileReader();
        reader.onload = () => { attachments.push({ kind: "image", name: file.name, url: reader.result }); showAttachments(); };
        reader.readAsDataURL(file);
      } else if (file.type.startsWith("text/") || TEXT_FILE.test(file.name) || file.type === "application/json") {
        file.text().then((text) => { attachments.push({ kind: "file", name: file.name, text }); showAttachments(); });
      } else {
        $("status").textContent = file.name + ": only images and text files can be attached.";
      }
    }
  }
  function showAttachments() {
    $("attachments").replaceChildren(...attachments.map((item, index) => {
      const box = document.createElement("div");
      box.className = "attachment";
      if (item.kind === "image") {
        const img = document.createElement("img");
        img.src = item.url;
        img.alt = "attached image " + (index + 1);
        box.append(img);
      } else {
        box.append(document.createTextNode("file: " + item.name));
      }
      box.append(button("×", () => { attachments.splice(index, 1); showAttachments(); }, "Remove " + item.name));
      return box;
    }));
  }
  $("attach").addEventListener("change", () => { attach(Array.from($("attach").files)); $("attach").value = ""; });
  $("input").addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
    if (files.length) { event.preventDefault(); attach(files); }
  });
  $("composer").addEventListener("dragover", (event) => { event.preventDefault(); $("composer").classList.add("dropping"); });
  $("composer").addEventListener("dragleave", () => $("composer").classList.remove("dropping"));
  $("composer").addEventListener("drop", (event) => {
    event.preventDefault();
    $("composer").classList.remove("dropping");
    attach(Array.from(event.dataTransfer ? event.dataTransfer.files : []));
  });

  // ------------------------------------------------------------------ composer and shortcuts

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if ((!text && !attachments.length) || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && controller) { event.preventDefault(); controller.abort(); }
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k") { event.preventDefault(); newConversation(); }
  });

  // ------------------------------------------------------------------ settings

  function fillSettings() {
    const model = currentModel();
    const options = ChatStore.modelSettings(settings, model);
    $("settings-model").textContent = model || "the default model";
    $("temperature").value = options.temperature;
    $("top-p").value = options.top_p;
    $("max-tokens").value = options.max_tokens || "";
    $("reasoning-effort").value = options.reasoning_effort;
    const info = card(model);
    $("effort-row").hidden = !(info && info.capabilities && info.capabilities.reasoning);
    $("system").value = settings.system;
    $("api-key").value = settings.apiKey;
    $("keep-on-server").checked = settings.storage !== "browser";
    $("storage-note").textContent = saved && saved.where === "server" ? "kept on the server, for this API key"
      : "kept in this browser only";
    $("preset").replaceChildren(new Option("Presets…", ""), ...settings.presets.map((preset, index) => new Option(preset.name, String(index))));
  }
  function saveModelSetting(name, value) {
    const model = currentModel();
    settings.perModel[model] = Object.assign(ChatStore.modelSettings(settings, model), { [name]: value });
    persistSettings();
  }
  $("settings-button").addEventListener("click", () => { fillSettings(); $("settings").showModal(); });
  $("temperature").addEventListener("change", () => saveModelSetting("temperature", Number($("temperature").value)));
  $("top-p").addEventListener("change", () => saveModelSetting("top_p", Number($("top-p").value)));
  $("max-tokens").addEventListener("change", () => saveModelSetting("max_tokens", Number($("max-tokens").value) || 0));
  $("reasoning-effort").addEventListener("change", () => saveModelSetting("reasoning_effort", $("reasoning-effort").value));
  $("system").addEventListener("change", () => { settings.system = $("system").value; persistSettings(); });
  $("api-key").addEventListener("change", async () => {
    settings.apiKey = $("api-key").value;
    persistSettings();
    loadModels();
    checkAdmin();
    await openStorage();  // another key: its own conversations
    newConversation();
  });
  $("keep-on-server").addEventListener("change", async () => {
    settings.storage = $("keep-on-server").checked ? "server" : "browser";
    persistSettings();
    await openStorage();
    newConversation();
  });
  $("preset").addEventListener("change", () => {
    const preset = settings.presets[Number($("preset").value)];
    if (!preset) return;
    $("system").value = settings.system = preset.text;
    persistSettings();
  });
  $("save-preset").addEventListener("click", () => {
    const name = prompt("Name of this system prompt");
    if (!name || !name.trim()) return;
    settings.presets.push({ name: name.trim(), text: $("system").value });
    persistSettings();
    fillSettings();
  });

  // ------------------------------------------------------------------ operator view

  $("operator-button").addEventListener("click", () => ChatOperator.open(headers, loadModels));
  $("close-operator").addEventListener("click", () => ChatOperator.close());
  $("operator").addEventListener("close", () => ChatOperator.close());

  // ------------------------------------------------------------------ start

  window.ChatApp = { current: () => conversation, settings: () => settings };  // (for tests and the console)
  async function openStorage() {
    saved = await ChatStore.open(settings.storage, headers);
  }

  applyTheme();
  (async () => {
    await openStorage();
    const stored = settings.currentId ? await saved.get(settings.currentId).catch(() => null) : null;
    conversation = stored || ChatTree.create();
    if (stored) await ChatMarkdown.ready;  // (its answers may hold math and code)
    render();
    refreshList();
    await loadModels();
    checkAdmin();
  })();
})();
