"""The request pipeline: one chain of named stages for every listener and protocol."""
