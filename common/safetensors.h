// safetensors.h: read and write the safetensors format.
// Layout: 8-byte little-endian header length N, then N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
// then the raw little-endian data; offsets are relative to the end of the header.
// Reading validates everything before any data is touched: header length inside the file, JSON
// well formed, known dtype, shape product x dtype size == end - begin, offsets inside the data
// and not overlapping. Errors name the file.
#ifndef MDN_SAFETENSORS_H
#define MDN_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum { ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_U16, ST_BOOL } StDtype;

typedef struct {
    char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t begin, end;          // byte offsets into the data section
} StTensor;

typedef struct {
    char *path;
    int count;
    StTensor *tensors;
    unsigned char *file;        // the whole file
    size_t file_size;
    unsigned char *data;        // start of the data section inside `file`
    size_t data_size;
    int metadata_count;         // "__metadata__": string -> string pairs
    char **metadata_keys, **metadata_values;
} SafeTensors;

// 0 on success; -1 with err set ("PATH: problem") on any malformed input.
int st_read(SafeTensors *st, const char *path, char *err, size_t errlen);
void st_free(SafeTensors *st);
const StTensor *st_find(const SafeTensors *st, const char *name);
const char *st_metadata(const SafeTensors *st, const char *key);   // NULL if absent
size_t st_dtype_size(StDtype dtype);
const char *st_dtype_name(StDtype dtype);

// Copy a floating tensor (F64/F32/F16/BF16) into float or double, checking its shape: `shape`
// with `ndim` dims must match exactly. -1 with err set ("PATH: tensor NAME ...") otherwise.
int st_get_f32(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, float *out, char *err, size_t errlen);
int st_get_f64(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, double *out, char *err, size_t errlen);
// integer tensors (I32/I64/U16/...) into int32
int st_get_i32(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, int32_t *out, char *err, size_t errlen);

// Writer: collect tensors (pointers are borrowed until st_writer_save returns), then save.
typedef struct {
    int count, capacity;
    StTensor *tensors;
    const void **datas;
    int metadata_count;
    char **metadata_keys, **metadata_values;
} StWriter;

void st_writer_init(StWriter *w);
void st_writer_add(StWriter *w, const char *name, StDtype dtype, int ndim, const int64_t *shape, const void *data);
void st_writer_add_metadata(StWriter *w, const char *key, const char *value);   // copied
// write PATH.tmp, fflush + fsync, rename to PATH: a failure (full disk) leaves PATH untouched.
int st_writer_save(StWriter *w, const char *path, char *err, size_t errlen);
void st_writer_free(StWriter *w);

// bf16 <-> float conversion helpers (round to nearest even).
float bf16_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float f16_to_float(uint16_t h);

#endif // MDN_SAFETENSORS_H
