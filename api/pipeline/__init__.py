"""The API-neutral generation pipeline every API surface translates into: a prepared chat request (template,
tools, grammar, reasoning plan) and the reading of each choice's output."""
