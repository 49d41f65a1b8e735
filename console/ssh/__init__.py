"""The SSH gateway: engineers' OpenSSH clients get an interactive shell in their own running
sandbox; every other SSH request (forwarding, exec, sftp, agent, X11, environment) is
refused and audited; every session is metered and recorded."""
