// Placeholder until the browser client lands (issue 3).
(window as unknown as { rhtmxSync: object }).rhtmxSync = {};
