#!/usr/bin/env python3
"""Writes the files derived from alerts.yml:

- alerts.test.yml, the promtool unit tests for alerts.yml;
- ../kubernetes/prometheusrule.yaml, the same rule groups as a
  prometheus-operator PrometheusRule (test/deploy.test.ts checks they match).

promtool compares every firing alert's labels *and* rendered annotations, so
each expected alert of a test must spell out its annotations. This script renders them
from alerts.yml with the labels (and the $value text) each case expects, so
the cases below only state what matters: which series, which eval times,
which alerts fire. What it checks is the firing logic and the labels; the
annotation text follows alerts.yml. After changing alerts.yml, run

    python3 deploy/prometheus/generate.py
    promtool test rules deploy/prometheus/alerts.test.yml

and review the diff. Needs python3-yaml (scripts/setup-system-deps.sh).
"""
import os
import re

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
rules = {r['alert']: r for g in yaml.safe_load(open(os.path.join(HERE, 'alerts.yml')))['groups'] for r in g['rules']}

def render(alert, labels, value=None):
    out = {}
    for k, v in rules[alert]['annotations'].items():
        def sub(m):
            expr = m.group(1).strip()
            if expr.startswith('$labels.'):
                return labels[expr[len('$labels.'):]]
            if expr.startswith('$value'):
                assert value is not None, (alert, expr)
                return value
            raise ValueError(expr)
        out[k] = re.sub(r'\{\{\s*(.*?)\s*\}\}', sub, v)
    return out

def exp(alert, labels, value=None, extra=None):
    l = dict(labels); l['severity'] = rules[alert]['labels']['severity']
    if extra: l.update(extra)
    return {'exp_labels': l, 'exp_annotations': render(alert, labels, value)}

def at(t, alert, alerts):
    return {'eval_time': t, 'alertname': alert, 'exp_alerts': alerts}

J = {'job': 'vfio-broker'}
A = {'instance': 'node-a:9473'}
B = {'instance': 'node-b:9473'}
C = {'instance': 'node-c:9473'}
def sel(name, **labels):
    return name + '{' + ', '.join(f'{k}="{v}"' for k, v in labels.items()) + '}'

tests = []

# VfioBrokerDown: node-a stops answering at 6m; node-b never does.
tests.append({'name': 'VfioBrokerDown fires after 5 minutes of failed scrapes, only for the down instance', 'interval': '1m',
  'input_series': [
    {'series': sel('up', job='vfio-broker', instance='node-a:9473'), 'values': '1x5 0x15'},
    {'series': sel('up', job='vfio-broker', instance='node-b:9473'), 'values': '1x20'},
    {'series': sel('up', job='other', instance='node-c:9100'), 'values': '0x20'}],
  'alert_rule_test': [
    at('9m', 'VfioBrokerDown', []),
    at('12m', 'VfioBrokerDown', [exp('VfioBrokerDown', {**J, **A})]),
    at('12m', 'VfioBrokerTargetMissing', [])]})

# VfioBrokerTargetMissing: the only target disappears at 6m.
tests.append({'name': 'VfioBrokerTargetMissing fires when no vfio-broker target is left', 'interval': '1m',
  'input_series': [
    {'series': sel('up', job='vfio-broker', instance='node-a:9473'), 'values': '1x5 _x30'},
    {'series': sel('up', job='other', instance='node-c:9100'), 'values': '1x35'}],
  'alert_rule_test': [
    at('5m', 'VfioBrokerTargetMissing', []),
    at('15m', 'VfioBrokerTargetMissing', []),
    at('25m', 'VfioBrokerTargetMissing', [exp('VfioBrokerTargetMissing', {}, extra=J)])]})

# VfioBrokerNotReady: node-a drains for 10 minutes then recovers; node-b is ready.
tests.append({'name': 'VfioBrokerNotReady fires after 5 minutes not ready and clears when ready again', 'interval': '1m',
  'input_series': [
    {'series': sel('vfio_broker_ready', job='vfio-broker', instance='node-a:9473'), 'values': '1x5 0x10 1x10'},
    {'series': sel('vfio_broker_ready', job='vfio-broker', instance='node-b:9473'), 'values': '1x25'},
    {'series': sel('vfio_broker_ready', job='vfio-broker', instance='node-c:9473'), 'values': '1x5 0x2 1x18'}],
  'alert_rule_test': [
    at('9m', 'VfioBrokerNotReady', []),
    at('13m', 'VfioBrokerNotReady', [exp('VfioBrokerNotReady', {**J, **A})]),
    at('20m', 'VfioBrokerNotReady', [])]})

# VfioBrokerTeardownStepFailures: node-a's first failure creates the series at 1;
# node-b's existing series increments; node-c's old failures (more than one
# window old) are flat. Before 15m every series is "new" to the offset branch,
# so the quiet check is at 17m.
TD = 'vfio_broker_teardown_step_failures_total'
tests.append({'name': 'VfioBrokerTeardownStepFailures fires on a first failure and on an increment, not on old failures', 'interval': '1m',
  'input_series': [
    {'series': sel(TD, job='vfio-broker', instance='node-a:9473', reason='close', action='destroy'), 'values': '_x20 1x40'},
    {'series': sel(TD, job='vfio-broker', instance='node-b:9473', reason='unbind', action='detach'), 'values': '0x20 1x40'},
    {'series': sel(TD, job='vfio-broker', instance='node-c:9473', reason='client_gone', action='destroy'), 'values': '3x60'}],
  'alert_rule_test': [
    at('17m', 'VfioBrokerTeardownStepFailures', []),
    at('22m', 'VfioBrokerTeardownStepFailures', [
      exp('VfioBrokerTeardownStepFailures', {**A, 'reason': 'close', 'action': 'destroy'}),
      exp('VfioBrokerTeardownStepFailures', {**B, 'reason': 'unbind', 'action': 'detach'})]),
    at('50m', 'VfioBrokerTeardownStepFailures', [])]})

# VfioBrokerVdeviceFoundTombstoned: node-a finds one at 11m; node-b only destroys.
VT = 'vfio_broker_vdevice_teardowns_total'
tests.append({'name': 'VfioBrokerVdeviceFoundTombstoned fires on found_tombstoned, never on destroyed', 'interval': '1m',
  'input_series': [
    {'series': sel(VT, job='vfio-broker', instance='node-a:9473', outcome='found_tombstoned'), 'values': '0x10 1x40'},
    {'series': sel(VT, job='vfio-broker', instance='node-a:9473', outcome='destroyed'), 'values': '0+2x50'},
    {'series': sel(VT, job='vfio-broker', instance='node-b:9473', outcome='found_tombstoned'), 'values': '0x50'},
    {'series': sel(VT, job='vfio-broker', instance='node-b:9473', outcome='destroyed'), 'values': '0+5x50'}],
  'alert_rule_test': [
    at('8m', 'VfioBrokerVdeviceFoundTombstoned', []),
    at('15m', 'VfioBrokerVdeviceFoundTombstoned', [exp('VfioBrokerVdeviceFoundTombstoned', A)]),
    at('50m', 'VfioBrokerVdeviceFoundTombstoned', [])]})

# VfioBrokerKernelCallErrorRate: node-a 10 errors per 110 calls a minute;
# node-b under 1%; node-c a high ratio but too few errors.
KC = 'vfio_broker_kernel_call_duration_seconds_count'
tests.append({'name': 'VfioBrokerKernelCallErrorRate fires above 5% with enough errors', 'interval': '1m',
  'input_series': [
    {'series': sel(KC, job='vfio-broker', instance='node-a:9473', op='ioas_map', result='ok'), 'values': '0+100x40'},
    {'series': sel(KC, job='vfio-broker', instance='node-a:9473', op='destroy', result='EBUSY'), 'values': '0+10x40'},
    {'series': sel(KC, job='vfio-broker', instance='node-b:9473', op='ioas_map', result='ok'), 'values': '0+1000x40'},
    {'series': sel(KC, job='vfio-broker', instance='node-b:9473', op='destroy', result='EBUSY'), 'values': '0+10x40'},
    {'series': sel(KC, job='vfio-broker', instance='node-c:9473', op='ioas_map', result='ok'), 'values': '0+1x40'},
    {'series': sel(KC, job='vfio-broker', instance='node-c:9473', op='vdevice_alloc', result='EEXIST'), 'values': '0+0.2x40'}],
  'alert_rule_test': [
    at('5m', 'VfioBrokerKernelCallErrorRate', []),
    # $value is 10 / 110, rendered by humanizePercentage.
    at('25m', 'VfioBrokerKernelCallErrorRate', [exp('VfioBrokerKernelCallErrorRate', A, value='9.091%')])]})

# VfioBrokerContextQueueWaitHigh: node-a's waits are all between 1 s and 10 s;
# node-b's are under 1 ms.
QW = 'vfio_broker_context_queue_wait_seconds_bucket'
series = []
for inst, slow in (('node-a:9473', True), ('node-b:9473', False)):
    for le in ('0.001', '1', '10', '+Inf'):
        inc = 10 if (not slow or le in ('10', '+Inf')) else 0
        series.append({'series': sel(QW, job='vfio-broker', instance=inst, le=le), 'values': f'0+{inc}x30'})
tests.append({'name': 'VfioBrokerContextQueueWaitHigh fires when p99 queue wait exceeds 1 s', 'interval': '1m',
  'input_series': series,
  'alert_rule_test': [
    at('5m', 'VfioBrokerContextQueueWaitHigh', []),
    # $value is 1 + 0.99 * (10 - 1) (linear in the (1, 10] bucket), by humanizeDuration.
    at('20m', 'VfioBrokerContextQueueWaitHigh', [exp('VfioBrokerContextQueueWaitHigh', A, value='9.91s')])]})

# VfioBrokerRpcServerErrors: a first INTERNAL on node-a at 6m; caller errors never fire.
RH = 'vfio_broker_grpc_server_handled_total'
tests.append({'name': 'VfioBrokerRpcServerErrors fires on INTERNAL, not on caller errors', 'interval': '1m',
  'input_series': [
    {'series': sel(RH, job='vfio-broker', instance='node-a:9473', method='BrokerService/OpenContext', code='OK'), 'values': '0+10x40'},
    {'series': sel(RH, job='vfio-broker', instance='node-a:9473', method='BrokerService/AllocVdevice', code='INTERNAL'), 'values': '_x5 1x35'},
    {'series': sel(RH, job='vfio-broker', instance='node-a:9473', method='BrokerService/DestroyObject', code='FAILED_PRECONDITION'), 'values': '0+3x40'},
    {'series': sel(RH, job='vfio-broker', instance='node-b:9473', method='BrokerService/BindDevice', code='NOT_FOUND'), 'values': '_x5 1+1x35'}],
  'alert_rule_test': [
    at('3m', 'VfioBrokerRpcServerErrors', []),
    at('8m', 'VfioBrokerRpcServerErrors', [exp('VfioBrokerRpcServerErrors', {**A, 'method': 'BrokerService/AllocVdevice', 'code': 'INTERNAL'})]),
    at('35m', 'VfioBrokerRpcServerErrors', [])]})

# VfioBrokerAuditWriteFailures: node-a's first failed write at 6m; node-b writes fine.
AR = 'vfio_broker_audit_records_total'
tests.append({'name': 'VfioBrokerAuditWriteFailures fires on failed audit writes only', 'interval': '1m',
  'input_series': [
    {'series': sel(AR, job='vfio-broker', instance='node-a:9473', result='written'), 'values': '0+5x30'},
    {'series': sel(AR, job='vfio-broker', instance='node-a:9473', result='failed'), 'values': '_x5 1x25'},
    {'series': sel(AR, job='vfio-broker', instance='node-b:9473', result='written'), 'values': '0+5x30'}],
  'alert_rule_test': [
    at('4m', 'VfioBrokerAuditWriteFailures', []),
    at('7m', 'VfioBrokerAuditWriteFailures', [exp('VfioBrokerAuditWriteFailures', A)]),
    at('28m', 'VfioBrokerAuditWriteFailures', [])]})

# VfioBrokerDeviceQuarantined: node-a has one quarantined device from 6m to 15m.
DV = 'vfio_broker_devices'
tests.append({'name': 'VfioBrokerDeviceQuarantined fires while a device stays quarantined', 'interval': '1m',
  'input_series': [
    {'series': sel(DV, job='vfio-broker', instance='node-a:9473', state='quarantined'), 'values': '0x5 1x10 0x10'},
    {'series': sel(DV, job='vfio-broker', instance='node-a:9473', state='bound'), 'values': '3x25'},
    {'series': sel(DV, job='vfio-broker', instance='node-b:9473', state='quarantined'), 'values': '0x25'}],
  'alert_rule_test': [
    at('9m', 'VfioBrokerDeviceQuarantined', []),
    at('13m', 'VfioBrokerDeviceQuarantined', [exp('VfioBrokerDeviceQuarantined', A, value='1')]),
    at('20m', 'VfioBrokerDeviceQuarantined', [])]})

doc = {'rule_files': ['alerts.yml'], 'evaluation_interval': '1m', 'tests': tests}
header = """# GENERATED by generate.py from the cases written there; edit that
# file, not this one. Unit tests for alerts.yml: `promtool test rules
# alerts.test.yml` (run by test/deploy.test.ts). Every alert has a case where
# it fires, with its exact labels and rendered annotations, and cases where it
# must not.
"""
text = yaml.safe_dump(doc, sort_keys=False, width=200, allow_unicode=True)
with open(os.path.join(HERE, 'alerts.test.yml'), 'w') as out:
    out.write(header + text)


# The PrometheusRule: alerts.yml's groups, with multi-line strings as block
# literals so the exprs read as they do in alerts.yml.
class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, value):
    style = '|' if '\n' in value else None
    return dumper.represent_scalar('tag:yaml.org,2002:str', value, style=style)


_Dumper.add_representer(str, _str)
groups = yaml.safe_load(open(os.path.join(HERE, 'alerts.yml')))['groups']
rule = {
    'apiVersion': 'monitoring.coreos.com/v1',
    'kind': 'PrometheusRule',
    'metadata': {
        'name': 'vfio-broker',
        'namespace': 'vfio-broker',
        'labels': {'app.kubernetes.io/name': 'vfio-broker'},
    },
    'spec': {'groups': groups},
}
rule_header = """# GENERATED by deploy/prometheus/generate.py from deploy/prometheus/alerts.yml
# (the comments there explain the rules); edit alerts.yml and regenerate.
# prometheus-operator picks this up when its ruleSelector matches these labels.
"""
with open(os.path.join(HERE, '..', 'kubernetes', 'prometheusrule.yaml'), 'w') as out:
    out.write(rule_header + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True))
