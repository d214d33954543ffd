// Where the page keeps things: conversations in IndexedDB (they can hold images: localStorage's few MB are not
// enough), settings in localStorage. Both stay in this browser; export / import moves conversations elsewhere.
(function (root) {
  "use strict";
  const DB = "llm-server-chat", STORE = "conversations", SETTINGS = "llm-server-settings";
  let opening = null;

  function open() {
    opening = opening || new Promise((resolve, reject) => {
      const request = indexedDB.open(DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return opening;
  }

  async function run(mode, work) {
    const db = await open();
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(STORE, mode);
      const request = work(transaction.objectStore(STORE));
      transaction.oncomplete = () => resolve(request ? request.result : undefined);
      transaction.onerror = () => reject(transaction.error);
    });
  }

  const conversations = {
    all: async () => (await run("readonly", (store) => store.getAll())).sort((a, b) => b.updated - a.updated),
    get: (id) => run("readonly", (store) => store.get(id)),
    put: (conversation) => run("readwrite", (store) => store.put(conversation)),
    remove: (id) => run("readwrite", (store) => store.delete(id)),
  };

  const DEFAULT_SETTINGS = {
    apiKey: "", theme: "system", model: "", system: "", presets: [], currentId: "",
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

  root.ChatStore = { conversations, loadSettings, saveSettings, modelSettings, MODEL_DEFAULTS };
})(this);
