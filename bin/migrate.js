#!/usr/bin/env node
import { holdSignals } from '../dist/cli/early-signals.js';

// Before anything else loads: a signal while the CLI loads goes to the command, which stops cleanly.
holdSignals();

// grpc-js (under etcd3) passes an IP address of an etcd endpoint as the TLS server name, and Node
// warns about that (DEP0123) on the first TLS connection: nothing the operator can act on.
const emitWarning = process.emitWarning;
process.emitWarning = function (warning, ...rest) {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? rest[0].code : rest[1];
  if (code === 'DEP0123') return;
  return emitWarning.call(this, warning, ...rest);
};

// A reader that stops early (`migrate --help | head`) ends the output, not the program with a stack.
process.stdout.on('error', (err) => {
  if (err.code !== 'EPIPE') throw err;
  process.exit(process.exitCode ?? 0);
});

const { main } = await import('../dist/cli/main.js');
process.exitCode = await main(process.argv.slice(2));
