// An application that keeps working while `migrate cutover --rule shop-config` and
// `migrate rollback --rule shop-config` move its keys between etcd and Consul.
//
//   npm install etcd-consul-migrate     # from your npm registry, or a tarball made with `npm pack` (README, "Installing it elsewhere")
//   ETCDCTL_ENDPOINTS=http://127.0.0.1:2379 CONSUL_HTTP_ADDR=http://127.0.0.1:8500 \
//   CONSUL_HTTP_TOKEN=... node app.mjs
//
// The Consul token needs read on the rules' phase documents and access to the rules' keys:
// `migrate acl` prints one policy per rule (migrate-shop-app-shop-config, …) with both.
import { createKvClient } from 'etcd-consul-migrate/client';

const kv = await createKvClient({
  config: new URL('./migration.yaml', import.meta.url).pathname,
  rules: ['shop-config', 'shop-flags'],
  // Compare every read with the other store during the dual-run; differences are counted, never logged with values.
  shadowReads: { sampleRate: 0.1 },
});

kv.on('switch', (e) => console.error(`rule ${e.rule}: ${e.from} → ${e.to} (phase ${e.phase})`));
kv.on('mismatch', (e) => console.error(`shadow read: ${e.key} ${e.verdict}`));
kv.on('problem', (e) => console.error(`${e.source} (${e.rule ?? 'client'}): ${e.error.message}`));

// The application keeps its etcd key names; the client maps them when Consul owns the rule.
await kv.put('/shop/config/currency', 'EUR');
console.log('currency', await kv.getString('/shop/config/currency'));

// Changes under a prefix, from whichever store owns each rule, across switches.
const watch = kv.watch('/shop/flags/');
await watch.ready;
const watching = (async () => {
  for await (const event of watch) {
    if (event.type === 'switch') console.error(`flags now read from ${event.to}`);
    else console.log(`${event.type} ${event.key.toString()} (from ${event.store})`);
  }
})();

const timer = setInterval(() => console.error(JSON.stringify(kv.stats())), 10_000);
process.once('SIGINT', async () => {
  clearInterval(timer);
  await kv.close(); // ends the watch too
  await watching;
});
