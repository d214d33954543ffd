"""The Conversations API surface (`/v1/conversations`): conversations and their items, kept per API key, which
Responses turns continue and extend (`conversation` on a create)."""
