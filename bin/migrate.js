#!/usr/bin/env node
import { main } from '../dist/cli/main.js';

// A reader that stops early (`migrate --help | head`) ends the output, not the program with a stack.
process.stdout.on('error', (err) => {
  if (err.code !== 'EPIPE') throw err;
  process.exit(process.exitCode ?? 0);
});

process.exitCode = await main(process.argv.slice(2));
