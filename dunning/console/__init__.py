"""The operator console: server-rendered pages for the setup flow (sign-in, import, SMS settings,
credits, cases, recovery, compliance), served with the HTTP API by `dunning console`."""
