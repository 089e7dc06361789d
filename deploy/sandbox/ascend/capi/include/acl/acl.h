/*
 * Simulated AscendCL (atlas-deploy sandbox boards): the umbrella header apps include as "acl/acl.h".
 * Written from the documented AscendCL API; NOT Huawei's header. No single-operator API (acl_op.h).
 */
#ifndef ACL_SIM_ACL_H_
#define ACL_SIM_ACL_H_

#include "acl_rt.h"
#include "acl_mdl.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ACL_MAJOR_VERSION 1
#define ACL_MINOR_VERSION 0
#define ACL_PATCH_VERSION 0

ACL_FUNC_VISIBILITY aclError aclInit(const char *configPath);
ACL_FUNC_VISIBILITY aclError aclFinalize(void);
ACL_FUNC_VISIBILITY aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion);
ACL_FUNC_VISIBILITY const char *aclrtGetSocName(void);

#ifdef __cplusplus
}
#endif

#endif /* ACL_SIM_ACL_H_ */
