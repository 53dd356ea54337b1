// Loaded with `node --import` by the benchmarks: reports the process's peak RSS (KiB) and CPU time (µs) on exit.
process.on('exit', () => {
  const usage = process.resourceUsage();
  process.stderr.write(`\nmaxRSS=${usage.maxRSS} cpuMicros=${usage.userCPUTime + usage.systemCPUTime}\n`);
});
