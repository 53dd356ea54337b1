// One load-generating process of the dual-run benchmark: its own etcd client
// (one client tops out at about 3-4.5k puts/s here, so the benchmark runs
// several), writing single-key puts at a fixed rate until SIGTERM.
//   node bench/etcd-writer.mjs <endpoint> <prefix> <rate/s> <key space>
// Prints "ready" once connected, then {"acked":n,"seconds":s} after it stops and every put has answered.
import { Etcd3 } from 'etcd3';

const [endpoint, prefix, rateText, spaceText] = process.argv.slice(2);
const rate = Number(rateText);
const space = Number(spaceText ?? 5000);
const client = new Etcd3({ hosts: endpoint });
const tag = Math.random().toString(36).slice(2, 8);
let running = true;
let written = 0;
let inflight = 0;
let acked = 0;
let stoppedAt = 0;
process.on('SIGTERM', () => {
  running = false;
  stoppedAt = Date.now();
});
// Connected before the clock starts: the parent times the step from "ready".
await client.put(`${prefix}${tag}-ready`).value('1');
process.stdout.write('ready\n');
const started = Date.now();
while (running) {
  const due = Math.floor(((Date.now() - started) / 1000) * rate);
  while (written < due && inflight < 128 && running) {
    inflight++;
    const i = written++;
    client.put(`${prefix}${tag}-${i % space}`).value(`v${i}`).then(() => (inflight--, acked++), () => inflight--);
  }
  await new Promise((r) => setTimeout(r, 2));
}
while (inflight > 0) await new Promise((r) => setTimeout(r, 10));
process.stdout.write(`${JSON.stringify({ acked, seconds: ((stoppedAt || Date.now()) - started) / 1000 })}\n`);
client.close();
