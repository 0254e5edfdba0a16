"""Everything about trajectories: schema, converters, rendering and masks, tool calls, build (tokenize, pack, mix)."""
