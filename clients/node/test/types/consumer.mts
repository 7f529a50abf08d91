// The same package through its `import` entry (named and default imports).
import { AuthClient, AuthClientError, authServerInterceptor, type VerifiedClaims } from '@authsidecar/client';
import authsidecar from '@authsidecar/client';

export async function check(token: string): Promise<VerifiedClaims | null> {
  const sidecar = new AuthClient();
  try {
    return await sidecar.verify(token);
  } catch (error) {
    if (error instanceof AuthClientError && error.code === 'UNAUTHENTICATED') return null;
    throw error;
  } finally {
    authServerInterceptor(sidecar, {}, { cacheDecisions: false }).close();
    console.log(authsidecar.DEFAULT_ADDRESS);
    sidecar.close();
  }
}
