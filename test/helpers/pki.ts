/** A throwaway CA with server and client certificates, made with the openssl CLI. */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

export interface Pki {
  ca: string;
  serverCert: string;
  serverKey: string;
  client(name: string, san: string | undefined): { cert: string; key: string };
}

export function makePki(dir: string): Pki {
  openssl(dir, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=test-ca');
  const issue = (name: string, subject: string, ext: string | undefined) => {
    openssl(dir, 'req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    const extArgs: string[] = [];
    if (ext) {
      writeFileSync(path.join(dir, `${name}.ext`), ext);
      extArgs.push('-extfile', `${name}.ext`);
    }
    openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', ...extArgs);
    return { cert: path.join(dir, `${name}.crt`), key: path.join(dir, `${name}.key`) };
  };
  const server = issue('server', '/CN=vfio-broker', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  return {
    ca: path.join(dir, 'ca.crt'),
    serverCert: server.cert,
    serverKey: server.key,
    client: (name, san) => issue(name, `/CN=${name}`, `${san ? `subjectAltName=${san}\n` : ''}extendedKeyUsage=clientAuth\n`),
  };
}
