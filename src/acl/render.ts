import { renderEnvelope } from '../report/envelope.js';
import { formatKey } from '../report/keys.js';
import { policyCreateCommand, policyRulesObject, renderEtcdCommands, renderPolicyHcl, type AclPlan, type ConsulPolicyPlan } from './acl.js';

export type AclFormat = 'text' | 'hcl' | 'json';

/** One file `--out-dir` writes. */
export interface AclFile {
  name: string;
  content: string;
}

function policyJson(policy: ConsulPolicyPlan) {
  return {
    name: policy.name,
    description: policy.description,
    role: policy.role,
    ...(policy.rule ? { rule: policy.rule } : {}),
    ...(policy.datacenters !== undefined ? { datacenters: policy.datacenters, primary: policy.primary ?? false } : {}),
    rules: renderPolicyHcl(policy, { comments: false }),
    structured: policyRulesObject(policy),
    grants: policy.grants,
  };
}

function etcdScript(plan: AclPlan): string {
  const commands = renderEtcdCommands(plan);
  const lines = [
    `# etcd role and user of the migrator of migration "${plan.migration}".`,
    '# Run as an etcd user with the root role (etcdctl --user root); `user add` prompts for the password.',
    ...commands.setup,
    '',
    plan.etcd.permissions.some((p) => p.when === 'always' && p.type === 'readwrite')
      ? '# Read: from the first audit on (and write on the dual-run\'s heartbeat key, for --heartbeat-key).'
      : '# Read: from the first audit on.',
    ...plan.etcd.permissions.filter((p) => p.when === 'always').flatMap((p, i) => [`# ${p.why}`, commands.always[i]!]),
    '',
    '# Write: grant before the first `migrate cutover` (readwrite replaces the read grant of the same range).',
    ...plan.etcd.permissions.filter((p) => p.when === 'cutover').flatMap((p, i) => [`# ${p.why}`, commands.cutover[i]!]),
  ];
  return `${lines.join('\n')}\n`;
}

/** The files `--out-dir` writes: one per Consul policy (HCL, or JSON rules with --format json) and the etcd role script. */
export function renderAclFiles(plan: AclPlan, format: AclFormat): AclFile[] {
  const files: AclFile[] = plan.consul.policies.map((policy) => format === 'json'
    ? { name: `${policy.name}.json`, content: `${JSON.stringify(policyRulesObject(policy), null, 2)}\n` }
    : { name: `${policy.name}.hcl`, content: renderPolicyHcl(policy, { comments: true }) });
  files.push({ name: `etcd-role-${plan.etcd.role}.sh`, content: etcdScript(plan) });
  return files;
}

/** `-policy-name` for every policy of a role (one per datacenter). */
function policyNames(plan: AclPlan, role: ConsulPolicyPlan['role']): string {
  return plan.consul.policies.filter((p) => p.role === role).map((p) => `-policy-name ${p.name}`).join(' ');
}

/** `migrate acl` on stdout: `hcl` is the policies alone, `text` adds how to apply them and the etcd role, `json` is one document. */
export function renderAcl(plan: AclPlan, format: AclFormat, written?: { dir: string; files: string[] }): string {
  if (format === 'json') {
    const commands = renderEtcdCommands(plan);
    return renderEnvelope('acl', 'ok', {
      migration: plan.migration,
      stateRoot: plan.stateRoot,
      consul: { policies: plan.consul.policies.map(policyJson) },
      etcd: {
        role: plan.etcd.role,
        user: plan.etcd.user,
        permissions: plan.etcd.permissions.map((p) => ({
          type: p.type,
          key: formatKey(p.key),
          rangeEnd: formatKey(p.rangeEnd),
          keyBase64: p.key.toString('base64'),
          rangeEndBase64: p.rangeEnd.toString('base64'),
          prefix: p.prefix,
          when: p.when,
          rules: p.rules,
          why: p.why,
        })),
        commands,
      },
      notes: plan.notes,
      ...(written ? { outDir: written.dir, files: written.files } : {}),
    });
  }
  if (written) {
    return `Wrote ${written.files.length} file(s) to ${written.dir}:\n${written.files.map((f) => `  ${f}`).join('\n')}\n`;
  }
  const policies = plan.consul.policies.map((policy) => renderPolicyHcl(policy, { comments: true }));
  if (format === 'hcl') return policies.join('\n');
  const migrator = plan.consul.policies.find((p) => p.role === 'migrator')!;
  const perDatacenter = plan.consul.policies.some((p) => p.datacenters !== undefined);
  const header = perDatacenter
    ? [
      `# Consul ACL policies for migration "${plan.migration}", one per datacenter (state under ${plan.stateRoot} in each datacenter's KV store).`,
      '# Create them in the ACL primary datacenter, each valid only where it applies   (migrate acl --out-dir <dir> writes the files):',
      ...plan.consul.policies.map((p) => `#   ${policyCreateCommand(p)}`),
      '# Tokens must be global (created in the ACL primary datacenter, without -local, with ACL token replication on) to be valid in every datacenter.',
      `# The migrator's token: consul acl token create -description "migrate ${plan.migration}" ${policyNames(plan, 'migrator')}`,
      `# The verifier's token (verify in CI): consul acl token create -description "migrate ${plan.migration} verify" ${policyNames(plan, 'verifier')}`,
    ]
    : [
      '# Create each with: consul acl policy create -name <name> -rules @<name>.hcl   (migrate acl --out-dir <dir> writes the files)',
      `# The migrator's token: consul acl token create -description "migrate ${plan.migration}" -policy-name ${migrator.name}`,
    ];
  const lines = [
    ...(perDatacenter ? [] : [`# Consul ACL policies for migration "${plan.migration}" (state under ${plan.stateRoot}).`]),
    ...header,
    '',
    policies.join('\n'),
    ...plan.notes.map((n) => `# Note: ${n}`),
    '',
    etcdScript(plan),
  ];
  return `${lines.join('\n')}`;
}
