/**
 * `npm run bench [-- <name>...]`: runs the named benchmarks (default: all)
 * against real servers started here. Each prints one JSON line per case.
 */
const BENCHES: Record<string, () => Promise<unknown>> = {
  copy: async () => (await import('./copy.js')).benchCopy(),
  dualrun: async () => (await import('./dualrun.js')).benchDualRun(),
  audit: async () => (await import('./audit.js')).benchAudit(),
  verify: async () => (await import('./verify.js')).benchVerify(),
};

const names = process.argv.slice(2).filter((a) => !a.startsWith('-'));
for (const name of names.length ? names : Object.keys(BENCHES)) {
  const bench = BENCHES[name];
  if (!bench) {
    process.stderr.write(`unknown bench ${name}; known: ${Object.keys(BENCHES).join(', ')}\n`);
    process.exit(2);
  }
  process.stderr.write(`bench: ${name}\n`);
  await bench();
}
