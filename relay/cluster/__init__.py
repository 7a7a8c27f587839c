"""Nodes: several relay processes, on one machine or many, that are one relay (issue 17).

A node is one ``atmos serve`` process with its own spool and delivery scheduler, as every MTA keeps
its own queue; what makes them one relay is the store they share (SQLite for the nodes of one machine,
PostgreSQL across machines):

- ``identity``: a node's name, its number from the store's registry, and the queue-id range that
  number owns, so a queue id names one message cluster-wide and says which node holds it;
- ``node``: the running node's registration, heartbeat (with the snapshot the operator plane shows),
  the cluster-wide lease for jobs that must run once (DNS and label re-checks, retention, webhook
  dispatch), and the commands other nodes leave for it (hold/release/retry/delete of its messages);
- ``workers``: ``atmos serve --workers N``, the parent process that binds the listening sockets once,
  hands them to N node processes, restarts one that dies and drains them all on SIGTERM.
"""
