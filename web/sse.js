// Server-Sent Events as the chat streams them: splits a growing text buffer into complete `data:` payloads.
(function (root) {
  "use strict";

  // Returns [payloads, rest]: the complete events' data (joined lines), and what is left for the next chunk.
  function takeEvents(buffer) {
    const payloads = [];
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) payloads.push(data.join("\n"));
    }
    return [payloads, buffer];
  }

  const api = { takeEvents };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.ChatSSE = api;
})(this);
