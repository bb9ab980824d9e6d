"""Live handover: a keeper process holds the state directory and the execs' exit statuses while
serving processes come and go, so that an upgrade never ends a running exec (see README, "Upgrades")."""
