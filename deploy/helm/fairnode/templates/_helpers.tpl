{{/* The release's object name prefix: the release name, with "fairnode" unless the release name holds it. */}}
{{- define "fairnode.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fairnode.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: fairnode
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fairnode.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fairnode.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "fairnode.fullname" .)) -}}
{{- end -}}

{{- define "fairnode.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "fairnode.fullname" .)) -}}
{{- end -}}

{{- define "fairnode.claimName" -}}
{{- .Values.spool.existingClaim | default (printf "%s-spool" (include "fairnode.fullname" .)) -}}
{{- end -}}

{{- define "fairnode.image" -}}
{{- $repository := required "image.repository is required: the registry path of the fairnode image, e.g. registry.hospital.example/fairnode" .root.Values.image.repository -}}
{{- printf "%s:%s%s" $repository (.root.Values.image.tag | default .root.Chart.AppVersion) .suffix -}}
{{- end -}}

{{/* The environment both roles share: the Secret's values and a writable matplotlib folder. */}}
{{- define "fairnode.env" -}}
- name: FAIRNODE_REGISTRY_URL
  valueFrom:
    secretKeyRef: {name: {{ include "fairnode.secretName" . }}, key: registry-url}
- name: FAIRNODE_PSEUDONYM_SECRET
  valueFrom:
    secretKeyRef: {name: {{ include "fairnode.secretName" . }}, key: pseudonym-key}
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end -}}

{{- define "fairnode.volumeMounts" -}}
- {name: spool, mountPath: {{ .Values.settings.data_dir }}}
- {name: config, mountPath: /etc/fairnode/fairnode.yaml, subPath: fairnode.yaml, readOnly: true}
{{- if .Values.settings.tls.enabled }}
- {name: tls, mountPath: /etc/fairnode/tls, readOnly: true}
{{- end }}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "fairnode.volumes" -}}
- name: spool
  persistentVolumeClaim: {claimName: {{ include "fairnode.claimName" . }}}
- name: config
  configMap: {name: {{ include "fairnode.fullname" . }}-config}
{{- if .Values.settings.tls.enabled }}
- name: tls
  secret: {secretName: {{ include "fairnode.tlsSecretName" . }}, defaultMode: 0440}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}
