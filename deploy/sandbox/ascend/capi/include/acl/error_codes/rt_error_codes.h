/*
 * Simulated AscendCL (atlas-deploy sandbox boards): the runtime's error codes this simulator returns.
 * Written from the documented list of runtime return codes; NOT Huawei's header.
 */
#ifndef ACL_SIM_RT_ERROR_CODES_H_
#define ACL_SIM_RT_ERROR_CODES_H_

#define ACL_RT_SUCCESS 0
#define ACL_ERROR_RT_PARAM_INVALID 107000      /* a pointer or range outside allocated memory */
#define ACL_ERROR_RT_INVALID_DEVICEID 107001   /* no such device, or not set */
#define ACL_ERROR_RT_CONTEXT_NULL 107002       /* no current context in the calling thread */
#define ACL_ERROR_RT_INVALID_HANDLE 107017
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001
#define ACL_ERROR_RT_NO_STREAM_RESOURCE 207008
#define ACL_ERROR_RT_INTERNAL_ERROR 507000
#define ACL_ERROR_RT_SOC_VERSION 507008
#define ACL_ERROR_RT_MODEL_EXECUTE 507011
#define ACL_ERROR_RT_SYS_DMA 507013
#define ACL_ERROR_RT_DEV_SETUP_ERROR 507033
#define ACL_ERROR_RT_STREAM_SYNC_TIMEOUT 507046

#endif /* ACL_SIM_RT_ERROR_CODES_H_ */
