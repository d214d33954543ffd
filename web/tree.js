// A conversation as a tree of messages: editing a user message or regenerating an answer adds a sibling (a branch);
// each message remembers which of its children is shown, so the page walks one path from a root to a leaf.
(function (root) {
  "use strict";

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }

  function create(title) {
    const now = Date.now();
    return { id: newId(), title: title || "New chat", created: now, updated: now, nodes: {}, roots: [], rootIndex: 0 };
  }

  function childrenOf(conversation, parentId) {
    return parentId ? conversation.nodes[parentId].children : conversation.roots;
  }

  // The shown path: [node, ...] from the selected root down the selected children.
  function path(conversation) {
    const out = [];
    let ids = conversation.roots, index = conversation.rootIndex;
    while (ids.length) {
      const node = conversation.nodes[ids[Math.min(index, ids.length - 1)]];
      out.push(node);
      ids = node.children;
      index = node.selected;
    }
    return out;
  }

  function select(conversation, parentId, index) {
    if (parentId) conversation.nodes[parentId].selected = index;
    else conversation.rootIndex = index;
  }

  // Adds a message under `parentId` (null: a first message) and shows it; returns it.
  function add(conversation, parentId, message) {
    const node = Object.assign({ id: newId(), parent: parentId || null, children: [], selected: 0 }, message);
    conversation.nodes[node.id] = node;
    const siblings = childrenOf(conversation, parentId);
    siblings.push(node.id);
    select(conversation, parentId, siblings.length - 1);
    conversation.updated = Date.now();
    return node;
  }

  // [position among its siblings (0-based), how many]
  function siblingPosition(conversation, node) {
    const siblings = childrenOf(conversation, node.parent);
    return [siblings.indexOf(node.id), siblings.length];
  }

  // Shows the sibling `step` away (-1 / +1) of `node`'s branch.
  function switchBranch(conversation, node, step) {
    const siblings = childrenOf(conversation, node.parent);
    const index = siblings.indexOf(node.id) + step;
    if (index >= 0 && index < siblings.length) select(conversation, node.parent, index);
  }

  // The shown messages up to and including `node` (everything when absent).
  function pathUpTo(conversation, node) {
    const out = [];
    for (const item of path(conversation)) {
      out.push(item);
      if (node && item.id === node.id) break;
    }
    return out;
  }

  const api = { create, path, add, siblingPosition, switchBranch, pathUpTo, newId };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.ChatTree = api;
})(this);
