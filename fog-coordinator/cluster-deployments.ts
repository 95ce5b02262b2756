/**
 * The deployed pipeline set of a fog cluster, in etcd (`deployed`): every coordinator sees every change
 * through its watch (the mirror), and serves the same set.
 *
 * Invariants:
 * - a new set is stored only if etcd's is still the one this coordinator knows (compared at its mod
 *   revision): another coordinator that deployed meanwhile makes it 409 deployment_conflict, and the
 *   client sends its request again;
 * - etcd unreachable: 503 no_quorum, and nothing changed.
 */
import type { Etcd3 } from 'etcd3'
import { HttpError } from '../core/errors.ts'
import type { DeployedSet } from '../core/pipeline/deployment.ts'
import type { DeploymentStore } from '../server/shell/deployment-store.ts'
import type { ClusterLayout } from './cluster-layout.ts'
import type { ClusterMirror } from './cluster-mirror.ts'
import type { ClusterSession } from './cluster-session.ts'

export interface EtcdDeploymentStoreParts {
  client: Etcd3
  layout: ClusterLayout
  session: ClusterSession
  mirror: ClusterMirror
}

export class EtcdDeploymentStore implements DeploymentStore {
  readonly #p: EtcdDeploymentStoreParts

  constructor (parts: EtcdDeploymentStoreParts) {
    this.#p = parts
  }

  /** The deployed set as this coordinator's mirror of etcd has it. */
  current (): DeployedSet {
    return this.#p.mirror.deployed
  }

  async replace (next: DeployedSet, expected: number): Promise<void> {
    const { client, layout, mirror, session } = this.#p
    const key = layout.deployed
    if (mirror.deployed.revision !== expected) {
      throw new HttpError(409, 'deployment_conflict', `the deployed set changed meanwhile (revision ${mirror.deployed.revision}, expected ${expected}); send the request again`)
    }
    let res
    try {
      res = await client.if(key, 'Mod', '==', mirror.rev(key)).then(client.put(key).value(JSON.stringify(next))).commit()
    } catch (err) {
      session.unanswered(err)
      throw new HttpError(503, 'no_quorum', `the fog cluster cannot store the deployment (etcd: ${(err as Error).message}); nothing changed`)
    }
    if (!res.succeeded) throw new HttpError(409, 'deployment_conflict', 'another coordinator deployed at the same time; send the request again')
    mirror.deployedStored(next, Number(res.header.revision))
  }
}
