import { formatBytes, formatCount, mdCode } from '../audit/render.js';
import type { PlanResult } from './plan.js';

/**
 * The migration runbook for this keyspace (pure): the phases in order, the
 * exact commands with this configuration, the gate each must pass before the
 * next, and the rollback at every step. Appended to `migrate plan --format
 * markdown`, so the runbook is always computed from the live keyspace and
 * the reviewed mapping, never written by hand.
 */
export function renderRunbook(result: PlanResult): string {
  const c = `-c ${shellWord(result.configFile)}`;
  const copyRules = result.rules.filter((r) => r.action !== 'keep');
  const keepRules = result.rules.filter((r) => r.action === 'keep');
  const leased = copyRules.filter((r) => r.sessions > 0);
  const out: string[] = [];
  const step = (title: string, commands: string[], gate: string, back: string) => {
    out.push(`### ${title}`, '', '```sh', ...commands, '```', '', `- **Gate:** ${gate}`, `- **Rollback:** ${back}`, '');
  };

  out.push(`## Runbook: migration ${mdCode(result.migrationId)}`, '');
  out.push(`Computed from etcd revision ${result.source.revision} and \`${result.configFile}\`. Run \`migrate plan ${c} --format markdown\` again after any change to the mapping; the commands below use this configuration.`, '');

  out.push('### 0. Resolve first', '');
  if (result.blockers.length === 0) out.push('- Nothing blocks the copy: no unmappable or unmapped keys stop it.');
  for (const b of result.blockers) out.push(`- [ ] **${b.code}** (${formatCount(b.count)}): ${b.message}. ${b.hint}`);
  out.push(`- [ ] Review the draft policies: \`migrate acl ${c}\` prints the Consul policies and the etcd role the migration needs; install them before step 1.`);
  out.push('');

  step('1. Preflight', [`migrate doctor ${c}`], 'exit 0: both servers answer, the credentials read every rule range and write under the state prefix, Consul enforces ACLs.', 'nothing was written (a scratch key, deleted).');

  step(
    '2. Dry run',
    [`migrate copy ${c} --dry-run --show-ops`],
    `the plan creates ${formatCount(result.totals.copyKeys)} key(s) (${formatBytes(result.totals.copyValueBytes)}) and ${formatCount(result.totals.sessions)} session(s); any "update" or "extra" line is a key Consul already holds: understand each before copying.`,
    'nothing was written.',
  );

  step(
    '3. Copy at a pinned revision, then verify',
    [`migrate copy ${c}`, `migrate verify ${c}`],
    '`verify` exits 0 (parity for every copy rule). An interrupted copy continues with `--resume`.',
    `the copy wrote only under the rules' targets and the migration's state prefix; a Consul snapshot taken before it (\`consul snapshot save\`) restores the previous state. etcd was never changed.`,
  );

  step(
    '4. Dual-run (weeks)',
    [`migrate dualrun ${c} --ha --metrics-addr :9464     # two replicas; see deploy/kubernetes`, `migrate verify ${c} --format junit > verify.xml     # in CI, every pipeline`, `migrate status ${c}`],
    '`/healthz` answers 200, `migrate_dualrun_lag_seconds` stays low, and the CI verify is green. Applications still read and write etcd.',
    'stop the dual-run (SIGTERM, exit 0): etcd was never changed.',
  );

  out.push('### 5. Cut over one application at a time', '');
  if (copyRules.length === 0) out.push('No rule copies anything: there is nothing to cut over.', '');
  for (const r of copyRules) {
    out.push(`#### Rule ${mdCode(r.rule)}: ${mdCode(r.from)} → ${mdCode(r.to)} (${formatCount(r.copyKeys)} key(s)${r.sessions ? `, ${formatCount(r.sessions)} session(s)` : ''})`, '');
    out.push('```sh', `migrate cutover ${c} --rule ${shellWord(r.rule)} --verify-now --yes`, '# switch the application to Consul (or let etcd-consul-migrate/client follow the phase)', `migrate status ${c}`, '```', '');
    out.push(
      '- **Gate:** the cutover checks, one by one, that the dual-run runs and has caught up with etcd, that a clean verify of the rule is at most 15 min old (`--verify-now` runs one), and that no late write or guard trip is open; it refuses with exit 4 and changes nothing otherwise. It saves the rule\'s Consul keys as the rollback point.',
      `- **Watch:** \`migrate_dualrun_late_writes_total{rule="${r.rule}"}\` must stay 0: a late write is an application still writing etcd.`,
      `- **Rollback:** \`migrate rollback ${c} --rule ${shellWord(r.rule)} --yes\` (gated on parity; the reverse mirror kept etcd current, so nothing is lost).`,
      `- **Finalize** once the application has run on Consul long enough: \`migrate finalize ${c} --rule ${shellWord(r.rule)} --export-etcd ${shellWord(`${r.rule}-etcd.json`)} --yes\` (add \`--delete-etcd\` to remove the rule's etcd keys). No rollback after this.`,
      '',
    );
  }
  if (keepRules.length > 0) out.push(`Rules that stay on etcd (\`keep\`, never touched): ${keepRules.map((r) => mdCode(r.rule)).join(', ')}.`, '');
  if (leased.length > 0) {
    out.push(`Leased keys (${leased.map((r) => mdCode(r.rule)).join(', ')}) become Consul sessions (\`Behavior delete\`, TTL clamped to 10 s–24 h) while the dual-run renews them; after cutover the application must create and renew its own sessions.`, '');
  }
  return out.join('\n');
}

/** Quotes a word for a POSIX shell when it needs it. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
