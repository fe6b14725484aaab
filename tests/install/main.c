/* An engine-side consumer of an installed arnorm: find_package(arnorm) or pkg-config. */
#include <arnorm.h>
#include <stdio.h>
int main(void) {
    int v = 0;
    arnormGetVersion(&v);
    arnormUniqueId id;
    arnormConfig_t cfg = ARNORM_CONFIG_INITIALIZER;
    cfg.backend = arnormBackendCpu;
    arnormComm_t comm;
    if (arnormGetUniqueId(&id) || arnormCommInitRank(&comm, 1, id, 0, &cfg)) return 1;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, w[8] = {0}, o[8];
    arnormResult_t r = arnormResidualRMSNorm(x, NULL, NULL, o, w, arnormFloat32, 1e-6f, 1.0f, 1, 8,
                                             arnormFloat32, comm, NULL);
    printf("arnorm %d: %s, o[7] = %g\n", v, arnormGetErrorString(r), o[7]);
    arnormCommDestroy(comm);
    return r;
}
