import type { DatacenterTally } from '../audit/datacenters.js';
import { formatBytes, mdCode } from '../audit/render.js';
import { formatCount } from '../report/count.js';
import type { PlanResult, PlanServiceRule } from './plan.js';

/** `30s`, `5m`, `2h`: a check setting as migration.yaml writes it. */
export function durationText(seconds: number): string {
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

/** What a service rule registers, in one line (text and markdown share it; `code` quotes templates). */
export function describeService(s: PlanServiceRule, code: (text: string) => string = (t) => `"${t}"`): string {
  const fields = s.fields ? ` at fields ${code(s.fields.address)}/${code(s.fields.port)}` : '';
  return `one instance per key under ${code(s.from)}: service ${code(s.name)}, instance id ${code(s.id)}, values ${s.format}${fields}${s.tags.length ? `, tags ${s.tags.map(code).join(', ')}` : ''}`;
}

/** The TTL check of a service rule's leased instances, and the counters the tool applies to it. */
export function describeCheck(s: PlanServiceRule): string {
  const c = s.check;
  return `TTL check of ${durationText(c.ttlSeconds)} on each leased key's instance: critical after ${c.failuresBeforeCritical} failed lease check(s) in a row, passing again after ${c.successBeforePassing} good one(s)${c.deregisterCriticalAfterSeconds !== null ? `; Consul deregisters an instance critical for ${durationText(c.deregisterCriticalAfterSeconds)}` : ''}`;
}

/** What keeps service rules' instances current after the copy. */
export const SERVICE_UPKEEP = '`migrate dualrun` passes the TTL checks while the etcd leases live and deregisters an instance when its key is deleted or its lease ends; if it stops, the leased instances turn critical within the TTL. `migrate verify` compares the rules\' instances in the catalog with etcd.';

/**
 * The migration runbook for this keyspace (pure): the phases in order, the
 * exact commands with this configuration, the gate each must pass before the
 * next, and the rollback at every step. Appended to `migrate plan --format
 * markdown`, so the runbook is always computed from the live keyspace and
 * the reviewed mapping, never written by hand.
 */
export function renderRunbook(result: PlanResult): string {
  const c = `-c ${shellWord(result.configFile)}`;
  const copyRules = result.rules.filter((r) => r.action === 'copy');
  const keepRules = result.rules.filter((r) => r.action === 'keep');
  const serviceRules = result.rules.filter((r) => r.action === 'service');
  const leased = copyRules.filter((r) => r.sessions > 0);
  const dcs = result.datacenters;
  const out: string[] = [];
  const step = (title: string, commands: string[], gate: string, back: string) => {
    out.push(`### ${title}`, '', '```sh', ...commands, '```', '', `- **Gate:** ${gate}`, `- **Rollback:** ${back}`, '');
  };

  out.push(`## Runbook: migration ${mdCode(result.migrationId)}`, '');
  out.push(`Computed from etcd revision ${result.source.revision} and \`${result.configFile}\`. Run \`migrate plan ${c} --format markdown\` again after any change to the mapping; the commands below use this configuration.`, '');

  out.push('### 0. Resolve first', '');
  if (result.blockers.length === 0) out.push('- Nothing blocks the copy: no unmappable or unmapped keys stop it.');
  for (const b of result.blockers) out.push(`- [ ] **${b.code}** (${formatCount(b.count)}): ${b.message}. ${b.hint}`);
  if (result.totals.noInstanceKeys > 0) {
    out.push(`- [ ] **service keys without an instance** (${formatCount(result.totals.noInstanceKeys)}): keys of ${serviceRules.filter((r) => r.noInstanceKeys > 0).map((r) => mdCode(r.rule)).join(', ')} make no catalog instance (listed above). Fit the rule's \`service:\` block to them or fix the registrations in etcd; the copy registers the others and reports these.`);
  }
  out.push(`- [ ] Review the draft policies: \`migrate acl ${c}\` prints the Consul policies and the etcd role the migration needs; install them before step 1.`);
  out.push('');

  step('1. Preflight', [`migrate doctor ${c}`], 'exit 0: both servers answer, the credentials read every rule range and write under the state prefix, Consul enforces ACLs.', 'nothing was written (a scratch key, deleted).');

  step(
    '2. Dry run',
    [`migrate copy ${c} --dry-run --show-ops`],
    dcs
      ? `the plan shows each datacenter's operations in turn: ${dcs.map((d) => `${dcName(d)} creates ${formatCount(d.copyKeys)} key(s) (${formatBytes(d.copyValueBytes)}) and ${formatCount(d.sessions)} session(s)`).join('; ')}${serviceRules.length ? `; the service rules register ${formatCount(result.totals.instances)} catalog instance(s) in the primary` : ''}. Any "update" or "extra" line is a key that datacenter already holds: understand each before copying.`
      : `the plan creates ${formatCount(result.totals.copyKeys)} key(s) (${formatBytes(result.totals.copyValueBytes)}) and ${formatCount(result.totals.sessions)} session(s)${serviceRules.length ? ` and registers ${formatCount(result.totals.instances)} catalog instance(s)` : ''}; any "update" or "extra" line is a key Consul already holds: understand each before copying.`,
    'nothing was written.',
  );

  step(
    '3. Copy at a pinned revision, then verify',
    [`migrate copy ${c}`, `migrate verify ${c}`],
    `\`verify\` exits 0 (parity for every copy rule${serviceRules.length ? ', and every service rule\'s instances in the catalog' : ''}${dcs ? ', in every datacenter' : ''}). An interrupted copy continues with \`--resume\`.${dcs ? ` The copy writes the datacenters one after the other (${dcs.map(dcName).join(', ')}); each keeps its own copy progress and checkpoint under the state prefix in its own KV store, and \`verify\` compares each datacenter on its own: a datacenter that does not answer is reported as not verified while the others are copied and verified.` : ''}`,
    `the copy wrote only under the rules' targets and the migration's state prefix${serviceRules.length ? ', and registered the service rules\' instances on its agent (each carries the meta `etcd-migrate-rule`; `consul services deregister -id <id>` removes one)' : ''}; a Consul snapshot taken before it (\`consul snapshot save\`) restores the previous state. etcd was never changed.`,
  );

  step(
    '4. Dual-run (weeks)',
    [`migrate dualrun ${c} --ha --metrics-addr :9464     # two replicas; see deploy/kubernetes`, `migrate verify ${c} --format junit > verify.xml     # in CI, every pipeline`, `migrate status ${c}`],
    `\`/healthz\` answers 200, \`migrate_dualrun_lag_seconds\` stays low, and the CI verify is green. Applications still read and write etcd.${serviceRules.length ? ' The service rules\' leased instances pass their TTL checks (`/v1/health/checks/<service>`).' : ''}${dcs ? ` The dual-run replicates to every datacenter (${dcs.map(dcName).join(', ')}): it holds its leader lock (\`leader\` under the state prefix) in each, and each datacenter has its own checkpoint and its own verify.` : ''}`,
    `stop the dual-run (SIGTERM, exit 0): etcd was never changed.${serviceRules.length ? ' The service rules\' leased instances then turn critical within their TTL.' : ''}`,
  );
  if (serviceRules.length > 0) {
    out.push('Service rules register catalog instances, not KV keys; the dual-run keeps them current:', '');
    for (const r of serviceRules) {
      const s = result.services.find((x) => x.rule === r.rule);
      const counts = `${formatCount(r.instances)} instance(s), ${formatCount(r.instances - r.instancesWithoutLease)} with a TTL check${r.instancesWithoutLease ? `, ${formatCount(r.instancesWithoutLease)} without a lease (no check: nothing expires them)` : ''}${r.noInstanceKeys ? `; ${formatCount(r.noInstanceKeys)} key(s) make no instance` : ''}`;
      out.push(`- ${mdCode(r.rule)}: ${s ? `${describeService(s, mdCode)}. ${describeCheck(s)}` : mdCode(r.from)}. Now: ${counts}.`);
    }
    out.push('', `${SERVICE_UPKEEP} Applications move their discovery to Consul (DNS \`<service>.service.consul\`, \`/v1/health/service/<service>?passing\`) at their own pace: these rules have no keys to cut over.`, '');
  }

  out.push('### 5. Cut over one application at a time', '');
  if (copyRules.length === 0) out.push('No rule copies anything: there is nothing to cut over.', '');
  if (dcs) {
    out.push('A rule copied to several datacenters is cut over, rolled back and finalized in one datacenter at a time, named with `--datacenter <dc>`: Consul owns the rule there while etcd stays the hub that keeps its other datacenters in step (the cutover refuses while Consul owns the rule in another one). Each datacenter\'s cutover is gated on that datacenter\'s own checkpoint and verify. A rule copied to one datacenter needs no `--datacenter`.', '');
  }
  for (const r of copyRules) {
    const ruleDcs = dcs?.filter((d) => d.rules.includes(r.rule));
    // Only a rule in several datacenters needs --datacenter (the others' one datacenter is found); those are named in its datacenters: list.
    const several = ruleDcs && ruleDcs.length > 1 ? ruleDcs.map((d) => d.datacenter ?? '') : undefined;
    const where = several ? ` --datacenter ${shellWord(several[0]!)}` : '';
    out.push(`#### Rule ${mdCode(r.rule)}: ${mdCode(r.from)} → ${mdCode(r.to)} (${formatCount(r.copyKeys)} key(s)${r.sessions ? `, ${formatCount(r.sessions)} session(s)` : ''}${ruleDcs ? `; ${several ? 'in each of' : 'in'} ${ruleDcs.map(dcName).join(', ')}` : ''})`, '');
    out.push('```sh', `migrate cutover ${c} --rule ${shellWord(r.rule)}${where} --verify-now --yes${several ? `     # one datacenter at a time: ${several.join(', ')}` : ''}`, '# switch the application to Consul (or let etcd-consul-migrate/client follow the phase)', `migrate status ${c}`, '```', '');
    out.push(
      `- **Gate:** the cutover checks, one by one, that the dual-run runs and has caught up with etcd, that a clean verify of the rule is at most 15 min old (\`--verify-now\` runs one), and that no late write or guard trip is open; it refuses with exit 4 and changes nothing otherwise. It saves the rule's Consul keys as the rollback point.${several ? ` In ${several.join(', ')}: one at a time, against that datacenter's checkpoint and verify; to move the rule to another of them, roll it back first.` : ''}`,
      `- **Watch:** \`migrate_dualrun_late_writes_total{rule="${r.rule}"}\` must stay 0: a late write is an application still writing etcd.`,
      `- **Rollback:** \`migrate rollback ${c} --rule ${shellWord(r.rule)}${where} --yes\` (gated on parity; the reverse mirror kept etcd current, so nothing is lost).`,
      several
        ? `- **Finalize** is refused while the rule is copied to other datacenters too (they get its changes through etcd): remove them from the rule's \`datacenters:\` first (and run the dual-run with \`--accept-mapping-change\`), then \`migrate finalize ${c} --rule ${shellWord(r.rule)} --export-etcd ${shellWord(`${r.rule}-etcd.json`)} --yes\`. No rollback after this.`
        : `- **Finalize** once the application has run on Consul long enough: \`migrate finalize ${c} --rule ${shellWord(r.rule)} --export-etcd ${shellWord(`${r.rule}-etcd.json`)} --yes\` (add \`--delete-etcd\` to remove the rule's etcd keys). No rollback after this.`,
      '',
    );
  }
  if (keepRules.length > 0) out.push(`Rules that stay on etcd (\`keep\`, never touched): ${keepRules.map((r) => mdCode(r.rule)).join(', ')}.`, '');
  if (leased.length > 0) {
    out.push(`Leased keys (${leased.map((r) => mdCode(r.rule)).join(', ')}) become Consul sessions (\`Behavior delete\`, TTL clamped to 10 s–24 h) while the dual-run renews them; after cutover the application must create and renew its own sessions.`, '');
  }
  return out.join('\n');
}

/** A datacenter in the runbook's prose. */
function dcName(d: DatacenterTally): string {
  return d.datacenter === null ? 'the target\'s datacenter' : mdCode(d.datacenter);
}

/** Quotes a word for a POSIX shell when it needs it. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
