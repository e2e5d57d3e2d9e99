-- Orthanc routing rule: send every CT study to fairnode once, when it is complete (stable).
--
-- A study is routed when it becomes stable (no new instance for StableAge seconds) and holds a CT series.
-- Once fairnode has taken it, the study is marked (user metadata "RoutedToFairnode") so that the SEG and SR
-- fairnode sends back into the same study, which make it stable again, do not send it a second time. A
-- study fairnode could not take is logged, and tried again when it next becomes stable (a new instance).
-- The destination is the DICOM modality named "fairnode" in Orthanc's configuration (DicomModalities).

FAIRNODE_MODALITY = 'fairnode'

function HasCtSeries(studyId)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in ipairs(series) do
    if s['MainDicomTags']['Modality'] == 'CT' then
      return true
    end
  end
  return false
end

function OnStableStudy(studyId, tags, metadata)
  if metadata['RoutedToFairnode'] ~= nil or not HasCtSeries(studyId) then
    return
  end
  print('routing CT study ' .. studyId .. ' to ' .. FAIRNODE_MODALITY)
  -- C-STORE of the whole study on one association; nil when fairnode did not take it
  local answer = RestApiPost('/modalities/' .. FAIRNODE_MODALITY .. '/store', studyId)
  if answer == nil then
    print('routing CT study ' .. studyId .. ' failed: fairnode did not take it')
    return
  end
  RestApiPut('/studies/' .. studyId .. '/metadata/RoutedToFairnode', 'yes')
end
