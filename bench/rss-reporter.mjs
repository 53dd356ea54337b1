// Loaded with `node --import` by the benchmarks: reports the process's peak RSS (KiB) on exit.
process.on('exit', () => {
  process.stderr.write(`\nmaxRSS=${process.resourceUsage().maxRSS}\n`);
});
