'use strict';
// Test support (outside test/, so `node --test test/` does not run it as a test file):
// the real server, `python -m dispatcher serve --no-auth`, in a child process.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const VENV_PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
const PYTHON = process.env.DISPATCH_PYTHON || (fs.existsSync(VENV_PYTHON) ? VENV_PYTHON : 'python3');

/**
 * Start a server on `port` (0: a free one, read from its `server.started` log line).
 * Returns { child, port: Promise<number>, log(), stop(signal) -> Promise<exit code | signal> }.
 */
function startServer({ port = 0 } = {}) {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('DISPATCH_')) delete env[name];
  const child = spawn(PYTHON, ['-m', 'dispatcher', 'serve', '--port', String(port), '--no-auth', '--log-format', 'json'], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let serverLog = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code === null ? signal : code)));
  const started = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${serverLog}`)), 30000);
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      serverLog += `${line}\n`;
      if (!line.startsWith('{')) return;
      const event = JSON.parse(line);
      if (event.event === 'server.started') {
        clearTimeout(timer);
        resolve(event.port);
      }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`the server exited (${code}):\n${serverLog}`)); });
  });
  started.catch(() => {}); // reported to whoever awaits `port`
  return {
    child,
    port: started,
    log: () => serverLog,
    /** Send `signal` (default SIGTERM) unless it already exited; resolves with its exit code (or signal name). */
    stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

module.exports = { startServer, ROOT, PYTHON };
