// Where the page keeps things: conversations on the server (per API key, so they follow the key to another browser;
// /chat/conversations), or, if the user chooses so or the server keeps none, in this browser's IndexedDB (they can
// hold images: localStorage's few MB are not enough); settings in localStorage. Export / import moves conversations.
(function (root) {
  "use strict";
  const DB = "llm-server-chat", STORE = "conversations", SETTINGS = "llm-server-settings";
  let opening = null;

  function database() {
    opening = opening || new Promise((resolve, reject) => {
      const request = indexedDB.open(DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return opening;
  }

  async function run(mode, work) {
    const db = await database();
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = work(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request ? request.result : undefined);
      transaction.onerror = () => reject(transaction.error);
    });
  }

  const browser = {
    all: async () => (await run("readonly", (store) => store.getAll())).sort((a, b) => b.updated - a.updated),
    get: (id) => run("readonly", (store) => store.get(id)),
    put: (conversation) => run("readwrite", (store) => store.put(conversation)),
    remove: (id) => run("readwrite", (store) => store.delete(id)),
  };
  function mentions(conversation, query) {
    return conversation.title.toLowerCase().includes(query) || Object.values(conversation.nodes).some((node) =>
      (node.text || node.content || "").toLowerCase().includes(query));
  }

  function server(headers) {
    const call = async (method, path, body) => {
      const response = await fetch("/chat/conversations" + path, { method, headers: headers(), body });
      if (response.status === 404 && method === "GET" && path) return undefined;
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error ? answer.error.message : response.status + " " + response.statusText);
      return answer;
    };
    return {
      list: async (query) => (await call("GET", "?q=" + encodeURIComponent(query || ""))).data,
      get: (id) => call("GET", "/" + encodeURIComponent(id)),
      put: (conversation) => call("PUT", "/" + encodeURIComponent(conversation.id), JSON.stringify(conversation)),
      remove: (id) => call("DELETE", "/" + encodeURIComponent(id)),
      all: async () => Promise.all((await call("GET", "?q=")).data.map((item) => call("GET", "/" + encodeURIComponent(item.id)))),
    };
  }

  // The conversations' home: "server" (when it answers) or "browser"; `headers` carries the API key.
  async function open(where, headers) {
    if (where !== "browser") {
      try {
        const home = server(headers);
        await home.list("");
        return Object.assign(home, { where: "server" });
      } catch (error) { /* no store there (or no access): this browser keeps them */ }
    }
    return Object.assign({
      where: "browser",
      list: async (query) => (await browser.all()).filter((item) => !query || mentions(item, query.toLowerCase()))
        .map(({ id, title, created, updated }) => ({ id, title, created, updated })),
    }, browser);
  }

  const DEFAULT_SETTINGS = {
    apiKey: "", theme: "system", model: "", system: "", presets: [], currentId: "", storage: "server",
    perModel: {},  // model id -> { temperature, top_p, max_tokens, reasoning_effort }
  };
  const MODEL_DEFAULTS = { temperature: 0.7, top_p: 1, max_tokens: 0, reasoning_effort: "" };

  function loadSettings() {
    try {
      return Object.assign({}, DEFAULT_SETTINGS, JSON.parse(localStorage.getItem(SETTINGS) || "{}"));
    } catch (error) {
      return Object.assign({}, DEFAULT_SETTINGS);
    }
  }
  function saveSettings(settings) {
    localStorage.setItem(SETTINGS, JSON.stringify(settings));
  }
  function modelSettings(settings, model) {
    return Object.assign({}, MODEL_DEFAULTS, settings.perModel[model] || {});
  }

  root.ChatStore = { open, loadSettings, saveSettings, modelSettings, MODEL_DEFAULTS };
})(this);
